"""The Prometheus endpoint of a unit (``[metrics] listen = "a.b.c.d:port"``): /metrics over HTTP.

Owns ``MetricsServer`` (prometheus_client's HTTP server on its own thread, a private registry,
one collector that reads the daemon on every scrape, so nothing is kept twice) and
``DOCUMENTED``, the metric names as exposed (the README lists them; a test scrapes for them):

    natpair_info{unit,feed}                      1
    natpair_uptime_seconds                       since the daemon started
    natpair_role{role}                           1 for this unit's failover role, 0 for the others
                                                 (STANDALONE without [failover])
    natpair_peer_role{role}                      the same for the peer as last heard (NONE: silent)
    natpair_states                               states in the core's table
    natpair_nat_mappings                         dynamic NAT mappings in use
    natpair_core_drops_total{reason}             packets dropped by the core, per reason
    natpair_core_events_total{counter}           the core's other counters
    natpair_feed_events_total{counter}           the feed's counters
    natpair_failovers_total                      times this unit became active
    natpair_replication_events_total{counter}    transport, wire, pair, role, detector counters
    natpair_replication_updates_total{table,field}  per replicated table: xmit, xerr, rcv, rerr
    natpair_replication_queue{queue}             pending, unacked (the retransmit queue), offered
    natpair_replication_lag_seconds              histogram: journal drain on the active -> ack
                                                 from the standby (replication/lag.py)
    natpair_bulk_sync_received_ratio             the standby's bulk sync progress, 0..1
"""
from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.exposition import start_http_server

from replication.role import RoleState

DOCUMENTED = (
    "natpair_info", "natpair_uptime_seconds", "natpair_role", "natpair_peer_role",
    "natpair_states", "natpair_nat_mappings", "natpair_core_drops_total",
    "natpair_core_events_total", "natpair_feed_events_total", "natpair_failovers_total",
    "natpair_replication_events_total", "natpair_replication_updates_total",
    "natpair_replication_queue", "natpair_replication_lag_seconds_bucket",
    "natpair_replication_lag_seconds_count", "natpair_replication_lag_seconds_sum",
    "natpair_bulk_sync_received_ratio",
)
ROLES = tuple(s.name for s in RoleState) + ("STANDALONE",)


class _Collector:
    def __init__(self, daemon):
        self.d = daemon

    def describe(self):
        return []          # no registration-time scrape: the daemon may not be started yet

    def collect(self):
        from dataplane import show
        d = self.d
        counters = d.handle({"cmd": "counters"})
        with d.lock:
            states, mappings = d.core.state_count, d.core.mapping_count
        info = GaugeMetricFamily("natpair_info", "the unit", labels=["unit", "feed"])
        info.add_metric([d.name, d.cfg.feed.kind], 1)
        yield info
        yield GaugeMetricFamily("natpair_uptime_seconds", "since the daemon started",
                                value=time.monotonic() - d.started)
        yield GaugeMetricFamily("natpair_states", "states in the core's table", value=states)
        yield GaugeMetricFamily("natpair_nat_mappings", "dynamic NAT mappings in use", value=mappings)
        core = counters.get("core", {})
        drops = CounterMetricFamily("natpair_core_drops", "packets dropped by the core, per reason",
                                    labels=["reason"])
        events = CounterMetricFamily("natpair_core_events", "the core's other counters",
                                     labels=["counter"])
        for k, v in sorted(core.items()):
            (drops if k.startswith("drop_") else events).add_metric([k], v)
        yield drops
        yield events
        feed = CounterMetricFamily("natpair_feed_events", "the feed's counters", labels=["counter"])
        for k, v in sorted(counters.get("feed", {}).items()):
            feed.add_metric([k], v)
        yield feed
        fo = show.show_failover(d, {})
        role = GaugeMetricFamily("natpair_role", "this unit's failover role", labels=["role"])
        peer = GaugeMetricFamily("natpair_peer_role", "the peer's role as last heard",
                                 labels=["role"])
        peer_state = (fo.get("peer") or {}).get("state", "NONE")
        for r in ROLES:
            role.add_metric([r], 1 if fo["role"] == r else 0)
            peer.add_metric([r], 1 if peer_state == r else 0)
        peer.add_metric(["NONE"], 1 if peer_state == "NONE" else 0)
        yield role
        yield peer
        yield CounterMetricFamily("natpair_failovers", "times this unit became active",
                                  value=fo.get("failovers", 0))
        rep = CounterMetricFamily("natpair_replication_events", "replication counters",
                                  labels=["counter"])
        for k, v in sorted(counters.get("replication", {}).items()):
            rep.add_metric([k], v)
        yield rep
        upd = CounterMetricFamily("natpair_replication_updates", "per replicated table",
                                  labels=["table", "field"])
        for table, fields in sorted(fo.get("tables", {}).items()):
            for field, v in fields.items():
                upd.add_metric([table, field], v)
        yield upd
        q = GaugeMetricFamily("natpair_replication_queue", "replication queues", labels=["queue"])
        tr = fo.get("transport", {})
        for name, key in (("pending", "pending"), ("unacked", "unacked"),
                          ("offered", "offered_waiting")):
            q.add_metric([name], tr.get(key, 0))
        yield q
        lag = d.pair.lag.snapshot() if d.pair is not None else {"buckets": [(float("inf"), 0)],
                                                                 "sum_ms": 0.0}
        buckets = [("+Inf" if b == float("inf") else repr(b / 1000), c) for b, c in lag["buckets"]]
        yield HistogramMetricFamily("natpair_replication_lag_seconds",
                                    "journal drain on the active -> ack from the standby",
                                    buckets=buckets, sum_value=lag["sum_ms"] / 1000)
        br = fo.get("bulk_recv") or {}
        yield GaugeMetricFamily("natpair_bulk_sync_received_ratio", "the standby's bulk sync",
                                value=(br.get("percent") or 0.0) / 100)


class MetricsServer:
    def __init__(self, daemon, address: str, port: int):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(daemon))
        self.server, self.thread = start_http_server(port, addr=address, registry=self.registry)
        self.address, self.port = address, port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(daemon, cfg) -> MetricsServer:
    from dataplane.daemon import log_event
    m = MetricsServer(daemon, cfg.address, cfg.port)
    log_event(logging.INFO, "metrics", listen=f"{cfg.address}:{cfg.port}", path="/metrics")
    return m
