"""Configuration: the working copy, diff, publish (canary, promote), generations, rollback,
explain, placement, machine credentials, and the signed bundle.

Routes the generator cannot express stay hand-written in `server/routers/config.py` and call the
local service: `PUT /config/node` and `POST /config/set` (the request body is refused past 1 MiB
before it is read whole), and the agent's `GET /machines/{id}/bundle` (ETag, long-poll, machine
credential). Their HTTP side is `HttpConfig` below.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar
from urllib.parse import quote

from pydantic import BaseModel

from netslate.canonical import canonical_json
from netslate.config import bundles, credentials, generation_cache, generations, listing, placement, tree, workingcopy
from netslate.config.explain import explain as explain_machine
from netslate.config.schema import json_schema
from netslate.errors import UserError
from netslate.inventory.search import machines_per_path
from netslate.services.framework import Service, http_client, op, requires
from netslate.services.records import MachineRef, Record

HTTP_CLASS = "HttpConfig"


class Canary(BaseModel):
    generation: int
    path: str


class RolloutState(BaseModel):
    current: int
    latest: int
    canary: Canary | None
    working_base: int


class ConfigStatus(RolloutState):
    stale: bool
    nodes: int


class ConfigNode(Record):
    """One node's document: from the working copy (`revision`, `base_generation`) or a generation."""

    omit_when_none: ClassVar[tuple[str, ...]] = ("revision", "base_generation", "generation")
    path: str
    key: str
    level: str
    document: dict[str, Any]
    source: str
    revision: int | None = None
    base_generation: int | None = None
    generation: int | None = None


class NodeWritten(BaseModel):
    path: str
    revision: int


class LeafChange(BaseModel):
    key: str
    old: Any = None
    new: Any = None


class NodeChange(BaseModel):
    node: str
    state: str  # added | changed | removed
    changes: list[LeafChange]


class MachineChange(BaseModel):
    id: int
    name: str | None
    tree_path: str
    changes: list[LeafChange]


class MachineEffect(BaseModel):
    machines_total: int | None
    machines_changed: int
    machines: list[MachineChange]
    truncated: bool


class ConfigDiff(RolloutState, Record):
    omit_when_none: ClassVar[tuple[str, ...]] = ("effect",)
    stale: bool
    nodes: list[NodeChange]
    effect: MachineEffect | None = None


class Published(RolloutState):
    generation: int
    digest: str
    changes: int


class Promoted(RolloutState):
    generation: int
    promoted_from: str | None


class RolledBack(RolloutState):
    generation: int
    rollback_of: int
    working_copy_followed: bool


class WorkingReset(BaseModel):
    working_base: int


class GenerationInfo(BaseModel):
    generation: int
    created_at: str
    author: str
    message: str
    kind: str  # publish | rollback
    canary_path: str | None
    rollback_of: int | None
    digest: str
    nodes_changed: int
    current: bool
    canary: bool


class GenerationDiff(BaseModel):
    generation: int
    message: str
    author: str
    nodes: list[NodeChange]


class ChainNode(BaseModel):
    node: str
    level: str


class ConfigExplanation(Record):
    omit_when_none: ClassVar[tuple[str, ...]] = ("ip_lease",)
    machine: MachineRef
    generation: int
    canary: bool
    chain: list[ChainNode]
    document: dict[str, Any]
    sources: dict[str, str]
    note: str
    ip_lease: dict[str, Any] | None = None


class Placed(BaseModel):
    id: int
    name: str | None
    tree_path: str
    previous: str | None
    serial: int


class Enrolled(BaseModel):
    id: int
    name: str | None
    credential: str
    replaced: bool


class TreeNode(BaseModel):
    path: str  # a tree path, or @MACHINE for a machine's own document
    key: str
    level: str
    settings: int  # leaf values set on this node (working copy)
    revision: int
    updated_by: str
    updated_at: str | None
    machines: int  # machines placed at this path or below it (0 for a machine's own document)


class ConfigService(Service):
    noun = "config"

    @op("GET", "/api/v1/schema/config")
    def schema(self) -> dict[str, Any]:
        """JSON schema of a node document (built from the pydantic models)."""
        raise NotImplementedError

    @op("GET", "/api/v1/config/status")
    def status(self) -> ConfigStatus:
        """Current, newest and canary generations, and whether the working copy is stale."""
        raise NotImplementedError

    @op("GET", "/api/v1/config/node")
    def node(self, path: str, generation: int | None = None) -> ConfigNode:
        """A node's document in the working copy, or in generation N. Secret values are redacted."""
        raise NotImplementedError

    # hand-written route (PUT /api/v1/config/node, body limit), see HttpConfig
    @requires("operator")
    def put_node(self, path: str, document: dict[str, Any] | None, expect_revision: int | None = None) -> NodeWritten:
        """Replace a node's working document; refused if its revision is not `expect_revision`."""
        raise NotImplementedError

    # hand-written route (POST /api/v1/config/set, body limit), see HttpConfig
    @requires("operator")
    def set_value(self, path: str, key: str, value: Any) -> NodeWritten:
        """Set one dotted key of a node's working document."""
        raise NotImplementedError

    def node_for_edit(self, path: str) -> ConfigNode:
        """A node's working document for an editor: secrets shown locally; remotely a node with secrets is refused."""
        raise NotImplementedError

    @op("POST", "/api/v1/config/unset", role="operator")
    def unset(self, path: str, key: str) -> NodeWritten:
        """Remove one dotted key from a node's working document (the value is inherited again)."""
        raise NotImplementedError

    @op("GET", "/api/v1/config/tree")
    def tree(self) -> list[TreeNode]:
        """The working copy's nodes (path, level, how many settings) and the machines placed at or below each."""
        raise NotImplementedError

    @op("GET", "/api/v1/config/diff")
    def diff(self, machines: bool = True) -> ConfigDiff:
        """What publishing the working copy would change: per node, and per machine."""
        raise NotImplementedError

    @op("POST", "/api/v1/config/publish", role="operator")
    def publish(self, message: str, canary: str | None = None, expect_base: int | None = None) -> Published:
        """Turn the working copy into the next generation, atomically (optionally as a canary)."""
        raise NotImplementedError

    @op("POST", "/api/v1/config/promote", role="operator")
    def promote(self) -> Promoted:
        """Make the canary generation effective for every machine."""
        raise NotImplementedError

    @op("POST", "/api/v1/config/rollback", role="operator")
    def rollback(self, generation: int, message: str) -> RolledBack:
        """Publish a new generation whose content equals GENERATION."""
        raise NotImplementedError

    @op("POST", "/api/v1/config/reset", role="operator")
    def reset(self) -> WorkingReset:
        """Discard the working copy's pending edits and restart from the newest generation."""
        raise NotImplementedError

    @op("GET", "/api/v1/config/history")
    def history(self, limit: int = 100) -> list[GenerationInfo]:
        """Published generations, newest first."""
        raise NotImplementedError

    @op("GET", "/api/v1/config/generations/{number}")
    def generation(self, number: int) -> GenerationDiff:
        """What one generation changed, per node (secrets redacted)."""
        raise NotImplementedError

    @op("GET", "/api/v1/machines/{machine}/explain")
    def explain(self, machine: str, generation: int | None = None) -> ConfigExplanation:
        """The machine's resolved document and, for every leaf, the node it came from."""
        raise NotImplementedError

    @op("POST", "/api/v1/machines/{machine}/place", role="operator")
    def place(self, machine: str, path: str) -> Placed:
        """Put a machine at a tree path (takes effect at once)."""
        raise NotImplementedError

    @op("POST", "/api/v1/machines/{machine}/enroll", role="operator")
    def enroll(self, machine: str) -> Enrolled:
        """Issue a machine a new credential (shown once) that unlocks its secrets in its bundle."""
        raise NotImplementedError

    # hand-written route (GET /api/v1/machines/{machine}/bundle: ETag, long-poll), see HttpConfig
    def bundle(self, machine: str, credential: str | None = None) -> dict[str, Any]:
        """The machine's signed bundle envelope, as the machine receives it."""
        raise NotImplementedError


MAX_HISTORY = 10000


class LocalConfig(ConfigService):
    def tree(self) -> list[TreeNode]:
        counts = machines_per_path(self.parts.ctx)
        out = []
        for n in listing.working_nodes(self.parts.ctx):
            below = 0 if n["key"].startswith("@") else sum(c for p, c in counts.items() if tree.under(p, n["key"]))
            out.append(TreeNode(**n, machines=below))
        return out

    def schema(self) -> dict[str, Any]:
        return json_schema()

    def status(self) -> ConfigStatus:
        return ConfigStatus(**generations.status(self.parts.ctx))

    def node(self, path: str, generation: int | None = None) -> ConfigNode:
        return ConfigNode(**workingcopy.get_node(self.parts.ctx, path, generation))

    def put_node(self, path: str, document: dict[str, Any] | None, expect_revision: int | None = None) -> NodeWritten:
        return NodeWritten(**workingcopy.put_node(self.parts.ctx, path, document or {}, self.actor, expect_revision))

    def set_value(self, path: str, key: str, value: Any) -> NodeWritten:
        return NodeWritten(**workingcopy.set_value(self.parts.ctx, path, key, value, self.actor))

    def node_for_edit(self, path: str) -> ConfigNode:
        return ConfigNode(**workingcopy.get_node(self.parts.ctx, path, reveal=True))

    def unset(self, path: str, key: str) -> NodeWritten:
        return NodeWritten(**workingcopy.unset_value(self.parts.ctx, path, key, self.actor))

    def diff(self, machines: bool = True) -> ConfigDiff:
        return ConfigDiff(**workingcopy.diff(self.parts.ctx, machines))

    def publish(self, message: str, canary: str | None = None, expect_base: int | None = None) -> Published:
        out = Published(**generations.publish(self.parts.ctx, message, self.actor, canary, expect_base))
        self._changed()
        return out

    def promote(self) -> Promoted:
        out = Promoted(**generations.promote(self.parts.ctx, self.actor))
        self._changed()
        return out

    def rollback(self, generation: int, message: str) -> RolledBack:
        out = RolledBack(**generations.rollback(self.parts.ctx, generation, message, self.actor))
        self._changed()
        return out

    def reset(self) -> WorkingReset:
        return WorkingReset(**generations.reset_working(self.parts.ctx, self.actor))

    def history(self, limit: int = 100) -> list[GenerationInfo]:
        if not 1 <= limit <= MAX_HISTORY:
            raise UserError(f"limit must be between 1 and {MAX_HISTORY}")
        return [GenerationInfo(**g) for g in generations.history(self.parts.ctx, limit)]

    def generation(self, number: int) -> GenerationDiff:
        return GenerationDiff(**generations.generation_diff(self.parts.ctx, number))

    def explain(self, machine: str, generation: int | None = None) -> ConfigExplanation:
        return ConfigExplanation(**explain_machine(self.parts.ctx, machine, generation))

    def place(self, machine: str, path: str) -> Placed:
        out = Placed(**placement.place(self.parts.ctx, machine, path, self.actor))
        self._changed()
        return out

    def enroll(self, machine: str) -> Enrolled:
        return Enrolled(**credentials.enroll(self.parts.ctx, machine, self.actor))

    def bundle(self, machine: str, credential: str | None = None) -> dict[str, Any]:
        envelope, _etag, _info = self.signed_bundle(machine, credential)
        return envelope

    def signed_bundle(self, machine: str, credential: str | None = None) -> tuple[dict, str, dict]:
        """(envelope, etag, info) for the bundle route; the image pin comes from the one boot engine."""
        return bundles.bundle(self.parts.ctx, machine, credential, assign=self.parts.boot_engine.assignment)

    def _changed(self) -> None:
        """Wake this server's long-polls at once (other processes notice the serial within a second),
        and resolve the new generation's node chains now, not on the first of many bundle requests.
        The resolution cache lives per process, so only a server (not a one-shot CLI) warms it."""
        self.parts.config_notifier.bump_threadsafe()
        if self.caller.kind != "local":
            threading.Thread(target=_warm, args=(self.parts.ctx,), daemon=True, name="config-warm").start()


def _warm(ctx) -> None:
    try:
        generation_cache.warm_all(ctx)
    except Exception:  # only a cache warm-up: requests resolve on demand anyway
        pass


def _plain_json(value: Any) -> Any:
    """Refuse what JSON cannot carry (a YAML date, say) with the line the local side gives, not a traceback."""
    try:
        canonical_json(value)
    except (TypeError, ValueError) as exc:
        raise UserError(f"document is not plain JSON data: {exc}") from None
    return value


class HttpConfig(http_client(ConfigService)):
    """The generated client plus the routes written by hand (body limit, bundle with a machine credential)."""

    def put_node(self, path: str, document: dict[str, Any] | None, expect_revision: int | None = None) -> NodeWritten:
        _plain_json(document)
        data = self.api.put("/api/v1/config/node", params={"path": path}, json={"document": document, "expect_revision": expect_revision})
        return NodeWritten(**data)

    def set_value(self, path: str, key: str, value: Any) -> NodeWritten:
        _plain_json(value)
        return NodeWritten(**self.api.post("/api/v1/config/set", json={"path": path, "key": key, "value": value}))

    def node_for_edit(self, path: str) -> ConfigNode:
        node = self.node(path)
        if "secrets" in (node.document or {}):
            raise UserError("this node holds secrets, which the API never shows; edit it locally or use `config set`")
        return node

    def bundle(self, machine: str, credential: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        return self.api.request("GET", f"/api/v1/machines/{quote(str(machine), safe='')}/bundle", headers=headers).json()
