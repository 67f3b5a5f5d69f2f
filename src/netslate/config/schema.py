"""The config document: pydantic models, validation of partial node documents, the JSON schema.

A node document is partial: every field is optional. Lists may also be written in the append
(`users+:`) or remove (`users-:`) form (see `merge.py`). Validation errors name the path and the
reason but never echo the offending value, so a bad secret does not end up in an error line.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from netslate.errors import UserError

MAX_DOCUMENT_BYTES = 256 * 1024
MAX_DEPTH = 24
MAX_LIST_ITEMS = 4096


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Interface(_Strict):
    dhcp: bool | None = None
    addresses: list[str] | None = Field(None, description="CIDR addresses, e.g. 10.0.0.5/24")
    gateway: str | None = None
    mtu: int | None = Field(None, ge=576, le=65535)
    mac: str | None = None


class Network(_Strict):
    mode: Literal["dhcp", "pool", "static"] | None = Field(
        None, description="dhcp, an address from the named IP pool, or static per-interface settings"
    )
    pool: str | None = Field(None, description="name of the IP pool when mode is 'pool'")
    interfaces: dict[str, Interface] | None = None


class Servers(_Strict):
    servers: list[str] | None = None
    search: list[str] | None = None


class User(_Strict):
    name: str = Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    uid: int | None = Field(None, ge=0, le=4294967294)
    groups: list[str] | None = None
    ssh_keys: list[str] | None = None
    password_hash: str | None = Field(None, description="crypt(3) hash, never a clear-text password")
    shell: str | None = None

    @field_validator("password_hash")
    @classmethod
    def _hashed(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("$") or v in ("!", "*")):
            raise ValueError("must be a crypt(3) hash such as $6$... (or '!' / '*' to lock)")
        return v


class File(_Strict):
    path: str = Field(pattern=r"^/")
    mode: str | None = Field(None, pattern=r"^0?[0-7]{3,4}$")
    owner: str | None = None
    group: str | None = None
    content: str | None = None
    template: str | None = Field(None, description="sandboxed Jinja2; sees `machine`, `facts`, `generation`")

    @model_validator(mode="after")
    def _one_source(self) -> "File":
        if (self.content is None) == (self.template is None):
            raise ValueError("give exactly one of 'content' or 'template'")
        if ".." in self.path.split("/"):
            raise ValueError("path must not contain '..'")
        return self


class Units(_Strict):
    enable: list[str] | None = None
    disable: list[str] | None = None
    mask: list[str] | None = None


class Mount(_Strict):
    what: str
    where: str = Field(pattern=r"^/")
    type: str
    options: str | None = None


class AgentSettings(_Strict):
    wait_seconds: int | None = Field(None, ge=0, le=300, description="long-poll wait for the next generation")
    relocate_seconds: int | None = Field(None, ge=1, le=86400, description="how often a machine that fell back to a "
                                         "later server looks for the preferred one again (default 300)")
    log_level: Literal["debug", "info", "warning", "error"] | None = None
    cache_last_known_good: bool | None = None
    report: bool | None = None


class HealthCheck(_Strict):
    name: str
    tcp: str | None = Field(None, description="host:port that must accept a connection")
    url: str | None = Field(None, description="http(s) URL that must answer 2xx/3xx")
    timeout_seconds: float | None = Field(None, gt=0, le=60)

    @model_validator(mode="after")
    def _one_target(self) -> "HealthCheck":
        if (self.tcp is None) == (self.url is None):
            raise ValueError("give exactly one of 'tcp' or 'url'")
        return self


class ConfigDocument(_Strict):
    """One node's configuration. Every field is optional; nearer nodes override farther ones."""

    hostname: str | None = Field(None, description="a template, e.g. '{{ machine.name }}'")
    timezone: str | None = None
    locale: str | None = None
    network: Network | None = None
    dns: Servers | None = None
    ntp: Servers | None = None
    users: list[User] | None = None
    files: list[File] | None = None
    units: Units | None = None
    sysctl: dict[str, str | int | bool] | None = None
    kernel_args: list[str] | None = None
    mounts: list[Mount] | None = None
    agent: AgentSettings | None = None
    health_checks: list[HealthCheck] | None = None
    secrets: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")], str] | None = Field(  # names: no newline, '$' or path
        None, description="stored sealed; delivered only inside a bundle encrypted to the credential of a machine at or above the secret's level (secret_levels)"
    )
    secret_levels: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")], Literal["token", "host", "tpm"]] | None = Field(
        None, description="per secret name, the minimum trust level a machine needs to receive it (default token)"
    )
    extra: dict[str, Any] | None = Field(None, description="free-form data for local tooling")


def json_schema() -> dict:
    schema = ConfigDocument.model_json_schema()
    schema["$comment"] = (
        "A node document. Any list field may also be written as 'FIELD+' (append) or 'FIELD-' "
        "(remove: items, or names/paths of items). 'KEY: null' removes an inherited value."
    )
    return schema


def _depth(obj: Any, limit: int, level: int = 0) -> None:
    if level > limit:
        raise UserError(f"document is nested deeper than {limit} levels")
    if isinstance(obj, dict):
        for v in obj.values():
            _depth(v, limit, level + 1)
    elif isinstance(obj, list):
        if len(obj) > MAX_LIST_ITEMS:
            raise UserError(f"a list has {len(obj)} items; the limit is {MAX_LIST_ITEMS}")
        for v in obj:
            _depth(v, limit, level + 1)


def _probe(doc: Any, where: str) -> tuple[Any, dict]:
    """Turn `k+`/`k-` forms into plain `k` so the models can check the items; remember the renames."""
    if not isinstance(doc, dict):
        return doc, {}
    out: dict = {}
    renames: dict = {}
    for key, value in doc.items():
        if not isinstance(key, str):
            raise UserError(f"{where or '/'}: keys must be strings")
        base = key[:-1] if key.endswith(("+", "-")) and len(key) > 1 else key
        if base != key:
            if base in doc:
                raise UserError(f"{where}/{key}: cannot combine '{base}' with '{key}' in one document")
            if not isinstance(value, list):
                raise UserError(f"{where}/{key}: the append/remove form needs a list")
            if key.endswith("-"):
                # remove lists hold items or item names; an empty list checks that the field is a list
                if base not in out:
                    out[base] = []
                    renames.setdefault("__keys__", {})[base] = key
                continue
        sub, sub_renames = _probe(value, f"{where}/{key}")
        out[base] = sub
        if sub_renames:
            renames[base] = sub_renames
        if base != key:
            renames.setdefault("__keys__", {})[base] = key
    return out, renames


def _loc_to_path(loc: tuple, renames: dict) -> str:
    parts = []
    r = renames
    for item in loc:
        name = str(item)
        if isinstance(r, dict):
            name = r.get("__keys__", {}).get(name, name)
            r = r.get(str(item), None)
        parts.append(name)
    return "/" + "/".join(parts)


def validate_document(doc: Any) -> dict:
    """Check a node document; raise UserError('PATH: reason; ...') without echoing values."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise UserError("a config document must be a mapping at the top level")
    from netslate.canonical import canonical_json

    try:
        size = len(canonical_json(doc))
    except (TypeError, ValueError) as exc:
        raise UserError(f"document is not plain JSON data: {exc}") from None
    if size > MAX_DOCUMENT_BYTES:
        raise UserError(f"document is {size} bytes; the limit is {MAX_DOCUMENT_BYTES}")
    _depth(doc, MAX_DEPTH)
    probe, renames = _probe(doc, "")
    try:
        ConfigDocument.model_validate(probe)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and ("[" in x or x.startswith("function-"))))
            problems.append(f"{_loc_to_path(loc, renames)}: {err['msg']}")
        raise UserError("invalid config document: " + "; ".join(problems[:10])) from None
    return doc
