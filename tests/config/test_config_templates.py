"""The template sandbox: escapes refused, runaway templates stopped within limits."""

import time

import pytest

from netslate.config import templates
from netslate.errors import UserError

VARS = {"machine": {"name": "pc1", "labels": {"room": "b12"}}, "facts": {"cpus": 4}, "generation": 3}


def test_renders_facts():
    assert templates.render("{{ machine.name }}-{{ machine.labels.room }}-{{ facts.cpus * 2 }}", VARS) == "pc1-b12-8"
    assert templates.render("{% for i in range(3) %}{{ i }}{% endfor %}", VARS) == "012"


@pytest.mark.parametrize("src", [
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ machine.__class__.__mro__ }}",
    "{{ machine.items.__globals__ }}",
    "{{ self._TemplateReference__context }}",
])
def test_sandbox_escape_refused(src):
    with pytest.raises(UserError, match="sandbox|undefined|unsafe|no attribute"):
        templates.render(src, VARS)


@pytest.mark.parametrize("src,reason", [
    ("{% for i in range(10000) %}{% for j in range(10000) %}{% for k in range(10000) %}{% endfor %}{% endfor %}{% endfor %}", "longer than"),
    ("{% set L = range(9000)|list %}{% for a in L %}{% for b in L %}{% set x = a %}{% endfor %}{% endfor %}", "longer than"),
    ("{% for i in range(10000) %}{% for j in range(10000) %}xxxxxxxxxx{% endfor %}{% endfor %}", "output is larger"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursed"),
    ("{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}", "longer than|larger"),
    ("{{ 'x' * 100000000 }}", "too large"),
    ("{{ range(100000000)|list }}", "range too large"),
    ("{{ ((9 ** 64) ** 64) ** 64 }}", "too large"),
])
def test_runaway_templates_are_stopped(src, reason):
    t0 = time.monotonic()
    with pytest.raises(UserError, match=reason):
        templates.render(src, VARS)
    assert time.monotonic() - t0 < templates.TIME_LIMIT + 1.5


def test_recursion_is_stopped_by_counting_nested_calls_not_by_the_clock():
    """On a busy machine deep recursion can outlast the time limit; the depth count stops it first
    and says why, whatever the clock does. Nesting within the limit still renders."""
    with pytest.raises(UserError, match=f"more than {templates.CALL_DEPTH_LIMIT} nested calls"):
        templates.render("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", VARS, time_limit=60)
    nested = "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{% else %}ok{% endif %}{% endmacro %}"
    limit = templates.CALL_DEPTH_LIMIT  # f(n) nests n + 1 calls
    assert templates.render(nested + "{{ f(%d) }}" % (limit - 1), VARS, time_limit=60) == "ok"
    with pytest.raises(UserError, match="recursed"):
        templates.render(nested + "{{ f(%d) }}" % limit, VARS, time_limit=60)


def test_missing_facts_chain_to_a_default_but_never_print_silently():
    """A machine that has not reported (or reported without its credential) has no facts: a template
    that gives a default still renders; one that prints a missing fact without a default fails."""
    from netslate.config import templates as t
    from netslate.errors import UserError

    known = {"facts": t.facts_view({"cpu": {"count": 4}}), "machine": {"name": "m1"}}
    assert t.render("{{ facts.cpu.count }} {{ facts.mem.total | default('?') }}", known) == "4 ?"
    assert t.render("{{ facts.cpu.count | default('?') }}", {"facts": t.facts_view({})}) == "?"
    with pytest.raises(UserError, match="undefined"):
        t.render("{{ facts.mem.total }}", known)
    with pytest.raises(UserError, match="has no attribute 'nope'"):
        t.render("{{ machine.nope }}", known)  # names other than facts stay strict ("has no attribute")
