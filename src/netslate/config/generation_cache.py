"""Per-process cache of resolved generations (generation number → resolution.Tree), LRU of 4.

Generations are immutable, so a cached Tree needs no invalidation (except after a KEK rotation
re-seals their secrets: bundles then `forget` it and read it again). `warm_all` resolves the node
chains of the effective generations ahead of the first bundle request after a publish.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from netslate.config import machines, state
from netslate.config.resolution import Tree
from netslate.config.snapshots import generation_snapshot


class GenerationCache:
    """Process-wide LRU of resolved generations (generation number → Tree)."""

    def __init__(self, size: int = 4):
        self.size = size
        self._trees: OrderedDict[int, Tree] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ctx, number: int) -> Tree:
        with self._lock:
            t = self._trees.get(number)
            if t is not None:
                self._trees.move_to_end(number)
                return t
        with ctx.db.read_session() as s:
            t = Tree(generation_snapshot(s, number))
        with self._lock:
            self._trees[number] = t
            while len(self._trees) > self.size:
                self._trees.popitem(last=False)
        return t

    def forget(self, number: int) -> None:
        """Drop one generation (its stored secrets were re-sealed under a new key)."""
        with self._lock:
            self._trees.pop(number, None)


_caches: dict[str, GenerationCache] = {}


def per_database(registry: dict, ctx, factory):
    """This process's one `factory()` object for ctx's database, kept in `registry` (a module's dict)."""
    key = str(ctx.db.url)
    c = registry.get(key)
    if c is None:
        c = registry.setdefault(key, factory())
    return c


def cache_for(ctx) -> GenerationCache:
    return per_database(_caches, ctx, GenerationCache)


def warm(ctx, number: int, paths: list[str]) -> int:
    """Resolve every node chain of a generation ahead of the first bundle request."""
    t = cache_for(ctx).get(ctx, number)
    for p in paths:
        t.resolve_path(p)
    return len(paths)


def warm_all(ctx) -> int:
    """Warm the chain cache of the effective generations for every occupied tree path."""
    with ctx.db.session() as s:
        st = state.read(s)
        paths = machines.occupied_paths(s)
        gens = {st.current} | ({st.canary_generation} if st.canary_generation else set())
    return sum(warm(ctx, g, paths) for g in gens)
