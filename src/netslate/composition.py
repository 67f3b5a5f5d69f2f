"""The composition root: every part built once, every background service in one visible order.

The server builds one `Parts` for its lifetime (`netslate.server.app`); the local CLI builds one
per command without background services. Services receive it and never build parts themselves.
"""

from __future__ import annotations

from functools import cached_property

from netslate.context import Context


class Parts:
    def __init__(self, ctx: Context, options: dict | None = None):
        self.ctx = ctx
        self.options = options or {}

    @cached_property
    def library(self):
        return self.ctx.library
