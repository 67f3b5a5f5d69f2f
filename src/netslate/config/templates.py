"""Sandboxed Jinja2 for hostnames and file templates, with limits on time and output size.

The sandbox (jinja2.sandbox) blocks attribute access to internals (`__class__`, `mro`, ...).
On top of that we stop runaway templates: every loop body and every call checks a deadline,
`range` is bounded, `*`/`**`/`+` cannot build huge values, and output is cut at a size limit.
"""

from __future__ import annotations

import threading
import time
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from netslate.errors import UserError

TIME_LIMIT = 0.5  # seconds per render
OUTPUT_LIMIT = 256 * 1024  # characters per render
VALUE_LIMIT = 64 * 1024  # longest string/list an operator may build
CALL_DEPTH_LIMIT = 50  # nested calls (macros calling macros); counted, so a busy machine stops it the same way

_local = threading.local()


class TemplateLimit(UserError):
    pass


def _tick() -> str:
    deadline = getattr(_local, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise TemplateLimit(f"template ran longer than {TIME_LIMIT} s and was stopped")
    return ""


def _size(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 0


class LimitedEnvironment(SandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**", "+"])

    def call_binop(self, context, operator, left, right):
        _tick()
        if operator == "**":
            if isinstance(right, (int, float)) and abs(right) > 64:
                raise SecurityError("exponent too large")
            if isinstance(left, int) and abs(left).bit_length() * abs(right) > 4096:
                raise SecurityError("value too large")
            return left**right
        if operator == "*":
            n = right if isinstance(right, int) else left if isinstance(left, int) else 1
            base = left if isinstance(right, int) else right
            if _size(base) * abs(n) > VALUE_LIMIT:
                raise SecurityError("value too large")
            return left * right
        if _size(left) + _size(right) > VALUE_LIMIT:
            raise SecurityError("value too large")
        return left + right

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
        _tick()
        depth = getattr(_local, "depth", 0)
        if depth >= CALL_DEPTH_LIMIT:
            raise TemplateLimit(f"template recursed too deeply (more than {CALL_DEPTH_LIMIT} nested calls) and was stopped")
        _local.depth = depth + 1
        try:
            return super().call(__context, __obj, *args, **kwargs)
        finally:
            _local.depth = depth

    def _parse(self, source, name, filename):
        tree = super()._parse(source, name, filename)
        # A loop body with no output and no calls would never check the clock: add a tick.
        for loop in tree.find_all(nodes.For):
            loop.body.insert(0, nodes.Output([nodes.Call(nodes.Name("_ns_tick", "load"), [], [], None, None)]))
        return tree


class MissingFact(StrictUndefined):
    """A fact the machine has not reported (or reported without its credential, so it does not
    count): chainable, so `facts.cpu.count | default('?')` works; printed without a default it
    still fails, like any other undefined name."""

    __slots__ = ()

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self

    __getitem__ = __getattr__


class TemplateFacts(dict):
    """The facts given to templates: a missing key is a `MissingFact`, at any depth."""

    def __missing__(self, key):
        return MissingFact(name=str(key))


def facts_view(value: Any) -> Any:
    if isinstance(value, dict):
        return TemplateFacts({k: facts_view(v) for k, v in value.items()})
    return value


def _bounded_range(*args: int):
    r = range(*args)
    if len(r) > 10_000:
        raise SecurityError("range too large (limit 10000)")
    return r


_env = LimitedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_env.globals = {"_ns_tick": _tick, "range": _bounded_range, "dict": dict}


@lru_cache(maxsize=4096)
def _compile(source: str):
    try:
        return _env.from_string(source)
    except TemplateError as exc:
        raise UserError(f"template does not parse: {exc}") from None


def check(source: str) -> None:
    """Raise UserError if the template does not compile."""
    _compile(source)


def render(source: str, variables: dict[str, Any], time_limit: float = TIME_LIMIT, output_limit: int = OUTPUT_LIMIT) -> str:
    if "{" not in source:  # fast path: plain text is not a template
        return source
    template = _compile(source)
    previous = getattr(_local, "deadline", None)
    _local.deadline = time.monotonic() + time_limit
    try:
        out: list[str] = []
        size = 0
        for chunk in template.generate(variables):
            size += len(chunk)
            if size > output_limit:
                raise TemplateLimit(f"template output is larger than {output_limit} characters and was stopped")
            out.append(chunk)
            _tick()
        return "".join(out)
    except UserError:
        raise
    except SecurityError as exc:
        raise UserError(f"template refused by the sandbox: {exc}") from None
    except RecursionError:
        raise TemplateLimit("template recursed too deeply and was stopped") from None
    except TemplateError as exc:
        raise UserError(f"template failed: {exc}") from None
    except (ArithmeticError, TypeError, ValueError, LookupError, AttributeError) as exc:
        raise UserError(f"template failed: {type(exc).__name__}: {exc}") from None
    finally:
        _local.deadline = previous
