"""The agent's current problems, one slot per source (standard library only).

Each source (the boot arguments, locate, identify, enrollment, the bundle, its secrets, reports)
owns a slot. When a source runs it empties its slot first (`start`) and adds what went wrong this
time (`add`), or the agent replaces the slot whole (`set`). So a report lists what is wrong now,
not everything that ever went wrong: a server that answers again, a machine approved since, a
report delivered at last each take their line away. `lines()` gives the slots in the order their
sources first spoke, each bounded.
"""

from __future__ import annotations

PER_SOURCE = 5  # lines kept per source (the latest)


class Problems:
    def __init__(self, boot: list[str] | None = None):
        self._slots: dict[str, list[str]] = {}
        if boot:
            self.set("boot", *boot)

    def start(self, source: str) -> None:
        """The source runs now: what it said last time no longer holds."""
        self._slots.pop(source, None)

    def add(self, source: str, line: str) -> None:
        slot = self._slots.setdefault(source, [])
        if line not in slot:
            slot.append(line)
            del slot[:-PER_SOURCE]

    def set(self, source: str, *lines: str | None) -> None:
        """Replace the source's slot with these lines (none, or only None: the source is fine now)."""
        self.start(source)
        for line in lines:
            if line:
                self.add(source, line)

    def of(self, source: str) -> list[str]:
        return list(self._slots.get(source, []))

    def lines(self) -> list[str]:
        return [line for slot in self._slots.values() for line in slot]

    # read like the list of lines it used to be
    def __iter__(self):
        return iter(self.lines())

    def __len__(self) -> int:
        return sum(len(slot) for slot in self._slots.values())

    def __repr__(self) -> str:
        return f"Problems({self.lines()!r})"
