"""Delta planning — pure: which new chunks travel together, compressed against which old bytes.

A client that holds version A of an artifact and wants version B fetches B's new chunks (those A
lacks) as *delta groups*: a few consecutive new chunks (in B's order) compressed as one zstd
frame whose prefix dictionary is the part of A they most likely replace (zstd `--patch-from`
style). Both sides run `plan(A's chunk list, B's chunk list)`: the server to build group N, the
client to know what group N holds and which of A's bytes decode it. So the plan is a pure,
deterministic function of the two (signed) chunk lists, and a group's URL, named by both
manifest digests and N, never changes meaning.

Where a new chunk "was" in A: the nearest earlier chunk B shares with A is an anchor; the new
chunk sits as far after the anchor's end in B as its old counterpart sat after it in A.
The dictionary is the old chunks within MARGIN bytes of that estimate, merged for the group.

Measured on two Debian image pairs (docs/images.md): per-chunk deltas reach 0.75x of plain zstd,
but groups (cross-chunk redundancy: a new package's files resemble each other) reach 0.55x.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

MARGIN = 256 * 1024  # old bytes either side of a new chunk's estimated old position
MAX_GROUP_BYTES = 4 * 1024 * 1024  # new (uncompressed) bytes per group
MAX_GROUP_CHUNKS = 64
MAX_DICT_BYTES = 16 * 1024 * 1024  # old bytes one group's dictionary may hold
# zstd parameters of a group frame (measured: level 6 with a larger hash/chain table beats level 9
# defaults on both pairs, because the tables must reach into a dictionary of up to 16 MiB)
ZSTD_LEVEL = 6
ZSTD_HASH_LOG = 23
ZSTD_CHAIN_LOG = 23
ZSTD_SEARCH_LOG = 4


@dataclass(frozen=True)
class Group:
    chunks: tuple[tuple[str, int], ...]  # (new chunk id, size), in the new artifact's order
    bases: tuple[tuple[int, int], ...]  # [start, end) index ranges into the old chunk list

    @property
    def size(self) -> int:
        return sum(s for _c, s in self.chunks)


def window_log(dict_bytes: int, data_bytes: int) -> int:
    """The zstd window that lets a frame reach back over its whole dictionary."""
    return max(20, min(27, (dict_bytes + data_bytes).bit_length()))


def plan(old: list, new: list) -> list[Group]:
    """Delta groups for the chunks of `new` that `old` lacks. Both are manifest chunk lists
    ([[offset, size, id], ...], tiling their artifact). Empty when `old` is empty."""
    if not old:
        return []
    old_pos: dict[str, tuple[int, int]] = {}
    for off, size, cid in old:
        old_pos.setdefault(cid, (off, size))
    starts = [e[0] for e in old]
    old_total = old[-1][0] + old[-1][1]
    # 1. the new chunks (first occurrence, in order), each with its estimated old byte range
    todo: list[tuple[str, int, int, int]] = []  # (id, size, index range start, end) into old
    seen: set[str] = set()
    anchor_old_end = anchor_new_end = 0
    for off, size, cid in new:
        known = old_pos.get(cid)
        if known is not None:
            anchor_old_end, anchor_new_end = known[0] + known[1], off + size
            continue
        if cid in seen:
            continue
        seen.add(cid)
        est = anchor_old_end + (off - anchor_new_end)
        lo, hi = max(0, est - MARGIN), min(old_total, est + size + MARGIN)
        if hi <= lo:  # beyond the end of the old artifact: its tail
            lo, hi = max(0, old_total - size - MARGIN), old_total
        s = max(bisect.bisect_right(starts, lo) - 1, 0)
        e = max(bisect.bisect_left(starts, hi), s + 1)
        todo.append((cid, size, s, min(e, len(old))))
    # 2. consecutive new chunks into groups; each group's ranges merged and capped
    groups: list[Group] = []
    cur: list[tuple[str, int, int, int]] = []
    cur_bytes = 0

    def close() -> None:
        ranges: list[list[int]] = []
        for _c, _s, s, e in sorted(cur, key=lambda t: (t[2], t[3])):
            if ranges and s <= ranges[-1][1]:
                ranges[-1][1] = max(ranges[-1][1], e)
            else:
                ranges.append([s, e])
        bases: list[tuple[int, int]] = []
        budget = MAX_DICT_BYTES
        for s, e in ranges:
            while e > s and _span(old, s, e) > budget:
                e -= 1
            if e > s:
                bases.append((s, e))
                budget -= _span(old, s, e)
            if budget <= 0:
                break
        groups.append(Group(tuple((c, sz) for c, sz, _s, _e in cur), tuple(bases)))

    for item in todo:
        if cur and (cur_bytes + item[1] > MAX_GROUP_BYTES or len(cur) >= MAX_GROUP_CHUNKS):
            close()
            cur, cur_bytes = [], 0
        cur.append(item)
        cur_bytes += item[1]
    if cur:
        close()
    return groups


def _span(old: list, s: int, e: int) -> int:
    return old[e - 1][0] + old[e - 1][1] - old[s][0]


def base_ranges(old: list, group: Group) -> list[tuple[int, int, list]]:
    """(byte offset, length, the old chunk entries) of each piece of the group's dictionary, in
    dictionary order: the dictionary is these byte ranges of the old artifact, concatenated."""
    out = []
    for s, e in group.bases:
        out.append((old[s][0], _span(old, s, e), old[s:e]))
    return out
