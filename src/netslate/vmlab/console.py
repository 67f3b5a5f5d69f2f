"""Serial console capture: QEMU writes the guest's serial port to a file; tests wait for patterns."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable

# iPXE and firmware draw with ANSI/VT100 escapes; strip them so patterns match the visible text.
_ANSI = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>c]|\r")


def clean(text: str) -> str:
    return _ANSI.sub("", text)


class SerialLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def raw(self) -> str:
        try:
            return self.path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def text(self) -> str:
        return clean(self.raw())

    def mark(self) -> int:
        """Position to search from later (wait_for(..., since=mark)) to only see new output."""
        return len(self.text())

    def wait_for(
        self,
        pattern: str | re.Pattern,
        timeout: float,
        since: int = 0,
        alive: Callable[[], bool] | None = None,
    ) -> re.Match:
        """Wait until `pattern` (regex) appears after offset `since`. Raises TimeoutError with the tail."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            m = rx.search(text, since)
            if m:
                return m
            if alive is not None and not alive():
                raise TimeoutError(f"VM exited before {rx.pattern!r} appeared; console tail:\n{text[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{rx.pattern!r} not seen within {timeout}s; console tail:\n{text[-2000:]}")
            time.sleep(0.2)
