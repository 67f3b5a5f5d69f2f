"""Prometheus metrics at /metrics, built per scrape from the database (prometheus-client)."""

from __future__ import annotations

import calendar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from netslate.fleet import core, reports


class FleetCollector:
    def __init__(self, ctx):
        self.ctx = ctx

    def collect(self):
        rows = reports.fleet_status(self.ctx)
        labels = ["machine", "name"]
        gen = GaugeMetricFamily("netslate_machine_config_generation", "Config generation the machine applied", labels=labels)
        cur = GaugeMetricFamily("netslate_machine_config_generation_behind", "1 if the machine runs an older generation than the current one", labels=labels)
        ver = GaugeMetricFamily("netslate_machine_image_version", "Image version the machine booted", labels=labels + ["image"])
        icache = GaugeMetricFamily("netslate_machine_image_from_cache", "1 if the image came from the local cache", labels=labels)
        ccache = GaugeMetricFamily("netslate_machine_config_from_cache", "1 if the config came from the last-known-good", labels=labels)
        healthy = GaugeMetricFamily("netslate_machine_healthy", "1 if every health check passed", labels=labels)
        seen = GaugeMetricFamily("netslate_machine_last_report_timestamp_seconds", "Unix time of the last report", labels=labels)
        state = GaugeMetricFamily("netslate_machine_state", "1 for the machine's current state", labels=labels + ["state"])
        flagged = GaugeMetricFamily("netslate_machine_flagged", "1 if the machine carries any flag", labels=labels)
        counts = GaugeMetricFamily("netslate_machines", "Machines per state", labels=["state"])
        for r in rows:
            lv = [str(r["id"]), r["name"] or ""]
            state.add_metric(lv + [r["state"]], 1)
            flagged.add_metric(lv, 1 if r["flags"] else 0)
            if not r["last_report"]:
                continue
            if r["generation"] is not None:
                gen.add_metric(lv, r["generation"])
            cur.add_metric(lv, 1 if "old_generation" in r["flags"] else 0)
            if r["version"] is not None:
                ver.add_metric(lv + [r["image"] or ""], r["version"])
            icache.add_metric(lv, 1 if r["image_source"] == "cache" else 0)
            ccache.add_metric(lv, 1 if r["config_source"] == "cache" else 0)
            healthy.add_metric(lv, 1 if r["healthy"] else 0)
            t = core.parse_iso(r["last_report"])
            seen.add_metric(lv, calendar.timegm(t.timetuple()))
        summary = reports.summary(rows)
        for k, n in summary["states"].items():
            counts.add_metric([k], n)
        yield from (gen, cur, ver, icache, ccache, healthy, seen, state, flagged, counts)


class BranchCollector:
    """A branch server (issue 15): read-only state, replication lag and the outbox."""

    def __init__(self, ctx):
        self.ctx = ctx

    def collect(self):
        st = self.ctx.db.replica_status()
        if st is None:
            return
        ro = GaugeMetricFamily("netslate_read_only", "1 while the central primary is out of reach (writes refused)")
        ro.add_metric([], 1 if st["read_only"] else 0)
        yield ro
        if st.get("lag_seconds") is not None:
            lag = GaugeMetricFamily("netslate_replication_lag_seconds", "Age of the newest data replayed by the standby (0 when streaming and caught up)")
            lag.add_metric([], st["lag_seconds"])
            yield lag
        box = self.ctx.outbox
        if box is not None:
            q = GaugeMetricFamily("netslate_outbox_pending_events", "Telemetry events queued for the central primary")
            q.add_metric([], box.pending())
            yield q


def render(ctx) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(ctx))
    registry.register(BranchCollector(ctx))
    return generate_latest(registry)
