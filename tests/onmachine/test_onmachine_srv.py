"""The one RFC 2782 weighted choice (netslate.onmachine.srv), as properties over generated record sets."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from netslate.agent import dnssrv
from netslate.discovery import core
from netslate.discovery.core import ServerInfo, SrvEntry
from netslate.onmachine.srv import rfc2782_order

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True)
STATISTICS = settings(max_examples=40, deadline=None, derandomize=True)


@dataclass(frozen=True)
class Rec:
    """An SRV-like record; `ident` makes every generated record distinct."""

    ident: int
    priority: int
    weight: int
    target: str


@st.composite
def record_sets(draw, targets=st.sampled_from(["a.test", "b.test", "c.test", ".", ""])):
    rows = draw(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 65535), targets), max_size=12))
    return [Rec(i, p, w, t) for i, (p, w, t) in enumerate(rows)]


@given(record_sets(), st.integers(0, 2**32 - 1))
@PROPERTY
def test_every_usable_record_once_priorities_non_decreasing_dot_dropped(records, seed):
    before = list(records)
    out = rfc2782_order(records, random.Random(seed))
    usable = [r for r in records if r.target not in (".", "")]
    assert Counter(r.ident for r in out) == Counter(r.ident for r in usable)  # each exactly once
    assert all(r.target not in (".", "") for r in out)  # "." = no service there, never tried
    assert [r.priority for r in out] == sorted(r.priority for r in out)  # lowest priority first, never mixed
    assert records == before  # the input is not touched
    assert out == rfc2782_order(records, random.Random(seed))  # a fixed seed gives the same order


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 100)), max_size=10), st.integers(0, 2**32 - 1))
@PROPERTY
def test_records_without_a_target_are_all_kept(rows, seed):
    # discovery's entries have no target: every one of them is ordered
    records = [SrvEntry(ServerInfo(f"s{i}", None, ("10.0.0.1",), 80), p, w) for i, (p, w) in enumerate(rows)]
    out = rfc2782_order(records, random.Random(seed))
    assert sorted(e.server.name for e in out) == sorted(e.server.name for e in records)
    assert [e.priority for e in out] == sorted(e.priority for e in out)


def first_pick_probabilities(weights: list[int]) -> list[float]:
    """RFC 2782's chance of each record (one priority) to be tried first: weight-0 records share
    1/(sum+1) when others have weight, all records are equal when every weight is 0, and otherwise
    a record comes first with weight/sum."""
    total, zeros = sum(weights), weights.count(0)
    if total == 0:
        return [1 / len(weights)] * len(weights)
    if zeros:
        return [(1 / (total + 1)) / zeros if w == 0 else w / (total + 1) for w in weights]
    return [w / total for w in weights]


@given(st.lists(st.integers(0, 60), min_size=1, max_size=5))
@STATISTICS
def test_first_pick_follows_the_weights_within_bounds(weights):
    records = [Rec(i, 7, w, f"t{i}.test") for i, w in enumerate(weights)]
    rng = random.Random(20260101)  # fixed seed: the counts below are reproducible
    n = 3000
    firsts = Counter(rfc2782_order(records, rng)[0].ident for _ in range(n))
    for rec, p in zip(records, first_pick_probabilities(weights)):
        bound = 5 * math.sqrt(p * (1 - p) / n) + 1e-9  # 5 sigma of a binomial proportion
        assert abs(firsts[rec.ident] / n - p) <= bound, (weights, rec, firsts, p)


def test_weights_decide_each_later_place_too():
    # once "big" is taken, the draw is over what is left: "heavy" is second 3 times in 4
    records = [Rec(0, 0, 600, "big"), Rec(1, 0, 300, "heavy"), Rec(2, 0, 100, "light")]
    rng = random.Random(5)
    seconds = Counter()
    for _ in range(4000):
        out = rfc2782_order(records, rng)
        if out[0].target == "big":
            seconds[out[1].target] += 1
    share = seconds["heavy"] / sum(seconds.values())
    assert abs(share - 0.75) < 0.04, seconds


def test_dot_target_means_no_service():
    assert rfc2782_order([Rec(0, 0, 0, ".")], random.Random(1)) == []
    assert rfc2782_order([Rec(0, 0, 10, "")], random.Random(1)) == []  # "." as the DNS client stores it
    out = rfc2782_order([Rec(0, 0, 10, "."), Rec(1, 5, 10, "x.test"), Rec(2, 1, 0, "y.test")], random.Random(1))
    assert [r.target for r in out] == ["y.test", "x.test"]
    assert rfc2782_order([], random.Random(1)) == []


def test_negative_weight_counts_as_zero_and_default_rng_works():
    out = rfc2782_order([Rec(0, 0, -5, "a"), Rec(1, 0, 10, "b")])
    assert sorted(r.target for r in out) == ["a", "b"]


def test_agent_and_discovery_draw_the_same_way():
    """The agent's SRV order and the server's locate order are one function: same records, same seed,
    same order."""
    assert dnssrv.rfc2782_order is rfc2782_order
    rows = [(0, 100), (0, 300), (0, 0), (10, 50), (10, 50), (11, 0)]
    entries = [SrvEntry(ServerInfo(f"s{i}", None, ("10.0.0.1",), 80), p, w) for i, (p, w) in enumerate(rows)]
    srvs = [dnssrv.Srv(p, w, 8080 + i, f"s{i}.fleet.test") for i, (p, w) in enumerate(rows)]
    for seed in range(50):
        by_server = [int(e.server.name[1:]) for e in core.rfc2782_order(entries, random.Random(seed))]
        by_agent = [r.port - 8080 for r in dnssrv.rfc2782_order(srvs, random.Random(seed))]
        assert by_server == by_agent
