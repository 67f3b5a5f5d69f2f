"""Limits on anonymous discovery at `/boot/ipxe` (issue 11 #11).

Any client on the boot network can ask for `/boot/ipxe?mac=…` with a MAC nobody knows, and each
such request used to add a `discovered` machine (300 rows/s from one client, without end). Two
limits now apply before a new machine is recorded:

- per source (the client's address; an IPv6 address counts by its /64): a token bucket of
  `burst` discoveries, refilled at `rate` per second;
- in all: at most `pending_max` machines discovered and not approved yet.

A request over a limit still gets the unknown machine's boot script (it just is not recorded), so
nothing that boots today stops booting; known machines never meet these limits. When a limit
bites, one log line says so, at most once per `LOG_EVERY` seconds per limit, with the count of
refusals since the last line.

`admit` is the pure decision (unit-tested); `DiscoveryLimiter` keeps the buckets and the cached
pending count for one server process.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("netslate.boot.discovery")

LOG_EVERY = 60.0  # seconds between two log lines of the same limit
MAX_SOURCES = 10_000  # buckets kept (least recently used beyond this are forgotten: they were full anyway)
PENDING_REFRESH = 5.0  # seconds the pending count from the database is trusted (admissions are added to it)


@dataclass(frozen=True)
class Limits:
    rate: float = 2.0  # new machines per second per source, sustained
    burst: int = 20  # new machines a source may add at once
    pending_max: int = 1000  # discovered, unapproved machines in all

    def check(self) -> "Limits":
        if self.rate <= 0 or self.burst < 1 or self.pending_max < 0:
            raise ValueError("discovery limits: rate > 0, burst >= 1, pending_max >= 0")
        return self


def discovery_limits(options: dict) -> Limits:
    """Limits from serve's options (`discovery_rate`, `discovery_burst`, `discovery_pending_max`)."""
    d = Limits()
    try:
        return Limits(rate=float(options.get("discovery_rate", d.rate)), burst=int(options.get("discovery_burst", d.burst)),
                      pending_max=int(options.get("discovery_pending_max", d.pending_max))).check()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"discovery limits: {exc}") from None


@dataclass(frozen=True)
class Bucket:
    tokens: float
    at: float


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str | None  # None, "rate" or "pending"
    bucket: Bucket  # the source's bucket after this request


def source_key(remote: str | None) -> str:
    """The address a limit counts by: IPv4 as it is, IPv6 by its /64 (one host has many)."""
    if not remote:
        return "unknown"
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return remote[:64]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def admit(bucket: Bucket | None, now: float, pending: int, limits: Limits) -> Verdict:
    """May one more unknown machine from this source be recorded now? Pure.

    The pending cap is checked first and does not spend the source's tokens."""
    if bucket is None:
        bucket = Bucket(float(limits.burst), now)
    tokens = min(float(limits.burst), bucket.tokens + max(0.0, now - bucket.at) * limits.rate)
    refilled = Bucket(tokens, now)
    if pending >= limits.pending_max:
        return Verdict(False, "pending", refilled)
    if tokens < 1.0:
        return Verdict(False, "rate", refilled)
    return Verdict(True, None, Bucket(tokens - 1.0, now))


class DiscoveryLimiter:
    """Per-process state of the limits: buckets per source, the pending count, the log throttle."""

    def __init__(self, count_pending: Callable[[], int], limits: Limits | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.limits = (limits or Limits()).check()
        self._count_pending = count_pending
        self._clock = clock
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()
        self._pending: int | None = None
        self._pending_at = 0.0
        self._lock = threading.Lock()
        self._refused = {"rate": 0, "pending": 0}
        self._logged_at = {"rate": float("-inf"), "pending": float("-inf")}
        self.refused_total = {"rate": 0, "pending": 0}

    def _pending_now(self, now: float) -> int:
        if self._pending is None or now - self._pending_at > PENDING_REFRESH:
            self._pending = self._count_pending()
            self._pending_at = now
        return self._pending

    def allow(self, remote: str | None) -> bool:
        """Record this unknown machine? False when a limit bites (logged, rate-limited)."""
        key = source_key(remote)
        with self._lock:
            now = self._clock()
            verdict = admit(self._buckets.get(key), now, self._pending_now(now), self.limits)
            self._buckets[key] = verdict.bucket
            self._buckets.move_to_end(key)
            while len(self._buckets) > MAX_SOURCES:
                self._buckets.popitem(last=False)
            if verdict.allowed:
                self._pending = (self._pending or 0) + 1
                return True
            reason = verdict.reason or "rate"
            self._refused[reason] += 1
            self.refused_total[reason] += 1
            if now - self._logged_at[reason] >= LOG_EVERY:
                n, self._refused[reason] = self._refused[reason], 0
                self._logged_at[reason] = now
                if reason == "pending":
                    log.warning("discovery cap: %d machines wait for approval (limit %d); %d unknown machine(s) not recorded "
                                "since the last such line (approve or remove pending machines: `netslate machine list --state discovered`)",
                                self._pending, self.limits.pending_max, n)
                else:
                    log.warning("discovery rate limit: source %s adds new machines faster than %g/s (burst %d); %d unknown "
                                "machine(s) not recorded since the last such line", key, self.limits.rate, self.limits.burst, n)
            return False
