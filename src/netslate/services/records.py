"""Records that several nouns' contracts share: the `Record` base (fields left out of the JSON when
unset) and `MachineRef`, the short form of a machine in fleet and config answers."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, model_serializer


class Record(BaseModel):
    """A record whose `omit_when_none` fields are left out of its JSON when unset (as the API always did)."""

    omit_when_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit(self, handler):
        data = handler(self)
        for key in self.omit_when_none:
            if data.get(key, 0) is None:
                del data[key]
        return data


class MachineRef(Record):
    """Which machine: its id and name, and its place in the config tree where the answer is about placement."""

    omit_when_none: ClassVar[tuple[str, ...]] = ("tree_path",)
    id: int
    name: str | None
    tree_path: str | None = None
