"""The daemon's answers to the operator's commands (``natpair show|clear|failover ...``).

Owns ``COMMANDS`` (control request ``cmd`` -> handler) and ``answer(daemon, request)``, run on
the control thread; every answer is a JSON-able dict with ``ok``. dataplane/view.py prints
them. Names used:

- ``show_failover``: this unit's role and how long it has been in it, the peer (state,
  priority, last heard), the last failover (when, from, to, why) and the failover count,
  poll/hold, the failover link (interface, carrier, hellos, wire drops), the transport
  (queues, retransmits), per replicated table xmit/xerr/rcv/rerr (replication/tables.py),
  the replication lag (replication/lag.py; ``None`` until acks filled it), bulk sync progress.
- ``show_history``: the role machine's transitions (time, from, event, to, reason).
- ``show_conn`` (``filters``, ``limit``): matching states (dataplane/connfilter.py), counts by
  state; ``show_xlate``: the NAT translations in use (dynamic, from the states) and the
  configured statics; ``show_arp``: the kernel's neighbour table of the two data legs
  (pyroute2); ``show_counters``: every core, feed, daemon and replication counter, the
  drop reasons apart.
- ``clear_conn`` (``filters``): deletes the matching states through the core, whose journal
  carries each DELETE to the standby; refused on a standby (it follows its active).
- ``failover_active`` / ``failover_standby``: a planned switchover (replication/switchover.py),
  answered when it is done.

The table is read in pages of PAGE states, the core's lock let go between pages, so a show on a
busy unit delays its packets by one page at a time. Times are wall-clock ISO 8601 (UTC) for the
operator, converted from the monotonic clock the machines keep.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

from dataplane import connfilter
from dataplane.core import PROTOS, SIDE_NAMES, ip_str
from replication.wire import REASONS as WIRE_REASONS

PAGE = 1024
CONN_LIMIT = 1000               # rows returned by show_conn unless the request says otherwise
SWITCHOVER_WAIT_S = 8.0
PROTO_NAMES = {v: k for k, v in PROTOS.items()}


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def wall(t_ms: int | None) -> str | None:
    """A monotonic ms timestamp as wall-clock ISO 8601 UTC."""
    if t_ms is None:
        return None
    t = time.time() - (monotonic_ms() - t_ms) / 1000
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def _retry(fn, tries: int = 5):
    """Read figures another thread is writing: a dict may change size while copied."""
    for i in range(tries):
        try:
            return fn()
        except RuntimeError:
            if i == tries - 1:
                raise
            time.sleep(0.001)


def _states(d, flt: connfilter.ConnFilter):
    """Every state that matches, page by page, the core held for one page at a time."""
    cursor = 0
    while cursor is not None:
        with d.lock:
            page, cursor = d.core.export_page(cursor, PAGE)
        for rec in page:
            if flt.match(rec):
                yield rec


def _ep(addr: int, port: int, proto: int) -> str:
    return ip_str(addr) if proto == PROTOS["icmp"] and port == 0 else f"{ip_str(addr)}:{port}"


def conn_row(rec) -> dict:
    a, b = rec.keys
    p = rec.proto
    return {"id": f"{rec.creator}/{rec.id}", "protocol": PROTO_NAMES.get(p, str(p)),
            "state": connfilter.state_name(rec),
            "initiator": {"side": SIDE_NAMES.get(a.side, a.side), "address": _ep(a.src, a.sport, p)},
            "responder": {"side": SIDE_NAMES.get(b.side, b.side), "address": _ep(b.src, b.sport, p)},
            "initiator_seen_as": _ep(b.dst, b.dport, p), "responder_seen_as": _ep(a.dst, a.dport, p),
            "age_s": round(rec.age_ms / 1000, 1), "expires_in_s": round(rec.expire_in_ms / 1000, 1),
            "bytes": list(rec.bytes), "packets": list(rec.packets)}


# ---- show failover ----

def _last_failover(history) -> dict | None:
    for t in reversed(history):
        if t.src is not t.dst and "ACTIVE" in (t.src.name, t.dst.name):
            return {"time": wall(t.time_ms), "from": t.src.name, "to": t.dst.name,
                    "event": t.event.name, "reason": t.reason}
    return None


def show_failover(d, req: dict) -> dict:
    pair = d.pair
    base = {"ok": True, "name": d.name, "uptime_s": round(time.monotonic() - d.started, 3)}
    if pair is None:
        return {**base, "failover": False, "role": "STANDALONE"}
    return {**base, **_retry(lambda: _failover_figures(d, pair))}


def _failover_figures(d, pair) -> dict:
    fo = d.cfg.failover
    role, det, tr = pair.role, pair.detector, pair.transport
    peer = role.peer
    dst = det.status()
    heard = dst["last_ms_ago"].get("failover")
    tc = tr.counters.as_dict()
    wc = pair.wire_counters.as_dict()
    rc = role.counters
    history = role.history
    return {
        "failover": True,
        "role": role.state.name,
        "in_state_ms": role.machine.in_state_ms(),
        "since": wall(role.machine.since_ms),
        "priority": role.priority, "preempt": role.preempt, "unit_id": role.unit_id,
        "yielding": role.yielding, "wants_active": pair.switchover.wanting,
        "peer": None if peer is None else {"state": peer.state.name, "priority": peer.priority,
                                           "unit_id": peer.unit_id, "yielding": peer.yielding},
        "last_failover": _last_failover(history),
        "failovers": rc.get("takeovers", 0) + rc.get("became_active", 0),
        "poll_ms": det.poll_ms, "hold_ms": det.hold_ms,
        "link": {"interface": fo.interface, "local": f"{fo.local[0]}:{fo.local[1]}",
                 "peer": f"{fo.peer[0]}:{fo.peer[1]}", "carrier_up": dst["carrier_up"],
                 "health": ("up" if heard is not None and heard <= det.hold_ms and not dst["silent"]
                            else "down"),
                 "last_hello_ms_ago": heard, "last_heard_ms_ago": dst["last_ms_ago"],
                 "hellos_tx": det.counters.get("hellos_tx_failover", 0),
                 "hellos_rx": det.counters.get("hellos_rx_failover", 0),
                 "rx_ok": wc.get("rx_ok", 0), "rx_dropped": wc.get("rx_dropped", 0),
                 "drops": {k: v for k, v in wc.items() if v and k in WIRE_REASONS}},
        "transport": {"pending": tr.pending, "unacked": tr.unacked,
                      "offered_waiting": pair.offered_waiting,
                      **{k: tc.get(k, 0) for k in ("tx_msgs", "tx_bytes", "tx_records", "tx_coalesced",
                                                   "tx_retransmits", "tx_errors", "rx_records",
                                                   "rx_duplicates", "rx_out_of_order", "tx_nacks",
                                                   "rx_nacks")}},
        "tables": pair.tables.snapshot(),
        "lag": {k: v for k, v in pair.lag.snapshot().items() if k != "buckets"},
        "bulk_send": pair.sender.progress(), "bulk_recv": pair.requester.progress(),
        "switchover": dict(pair.switchover.counters),
    }


def show_history(d, req: dict) -> dict:
    if d.pair is None:
        return {"ok": True, "name": d.name, "failover": False, "transitions": []}
    rows = [{"time": wall(t.time_ms), "from": t.src.name, "event": t.event.name, "to": t.dst.name,
             "reason": t.reason} for t in _retry(lambda: d.pair.role.history)]
    return {"ok": True, "name": d.name, "failover": True, "transitions": rows}


# ---- tables ----

def _filter(req: dict) -> connfilter.ConnFilter:
    return connfilter.parse(req.get("filters") or {})


def show_conn(d, req: dict) -> dict:
    flt = _filter(req)
    limit = req.get("limit", CONN_LIMIT)
    if not isinstance(limit, int) or limit < 0:
        raise connfilter.FilterError(f"limit must be a count >= 0, not {limit!r}")
    rows, by_state, matched = [], {}, 0
    for rec in _states(d, flt):
        matched += 1
        st = connfilter.state_name(rec)
        by_state[st] = by_state.get(st, 0) + 1
        if len(rows) < limit:
            rows.append(conn_row(rec))
    with d.lock:
        total = d.core.state_count
    return {"ok": True, "name": d.name, "filters": flt.as_dict(), "total": total,
            "matched": matched, "by_state": by_state, "shown": len(rows), "conns": rows}


def show_xlate(d, req: dict) -> dict:
    seen: dict[tuple, dict] = {}
    for rec in _states(d, connfilter.ConnFilter()):
        a, b = rec.keys
        p = PROTO_NAMES.get(rec.proto, str(rec.proto))
        found = []
        if (a.src, a.sport) != (b.dst, b.dport):       # the initiator's source was translated
            found.append(("source", SIDE_NAMES.get(a.side), _ep(a.src, a.sport, rec.proto),
                          SIDE_NAMES.get(b.side), _ep(b.dst, b.dport, rec.proto)))
        if (a.dst, a.dport) != (b.src, b.sport):       # the responder's address was translated
            found.append(("destination", SIDE_NAMES.get(b.side), _ep(b.src, b.sport, rec.proto),
                          SIDE_NAMES.get(a.side), _ep(a.dst, a.dport, rec.proto)))
        for kind, rside, real, mside, mapped in found:
            key = (p, kind, real, mapped)
            x = seen.get(key)
            if x is None:
                x = seen[key] = {"protocol": p, "kind": kind, "real": f"{rside}:{real}",
                                 "mapped": f"{mside}:{mapped}", "conns": 0}
            x["conns"] += 1
    statics = [{"protocol": s.proto or "any", "kind": "static",
                "real": f"inside:{s.inside}" + (f":{s.inside_port}" if s.proto else ""),
                "mapped": f"outside:{s.outside}" + (f":{s.outside_port}" if s.proto else "")}
               for s in d.cfg.nat.static]
    with d.lock:
        mappings = d.core.mapping_count
    return {"ok": True, "name": d.name, "in_use": len(seen), "mappings": mappings,
            "xlates": list(seen.values()), "static": statics}


def show_arp(d, req: dict) -> dict:
    from pyroute2 import IPRoute
    from pyroute2.netlink.rtnl.ndmsg import states as nd_states

    legs = {d.legs.inside_index: ("inside", d.legs.inside),
            d.legs.outside_index: ("outside", d.legs.outside)}
    rows = []
    with IPRoute() as ipr:
        for ifindex, (leg, ifname) in legs.items():
            for n in ipr.get_neighbours(ifindex=ifindex):
                dst = n.get("NDA_DST")
                if dst is None or ":" in dst:
                    continue
                st = n["state"]
                names = [k for k, v in nd_states.items() if v and st & v] or ["none"]
                rows.append({"leg": leg, "interface": ifname, "address": dst,
                             "lladdr": n.get("NDA_LLADDR"), "state": "|".join(names)})
    rows.sort(key=lambda r: (r["leg"], tuple(int(x) for x in r["address"].split("."))))
    return {"ok": True, "name": d.name, "neighbours": rows}


def show_counters(d, req: dict) -> dict:
    reply = d.handle({"cmd": "counters"})
    reply["drops"] = {k: v for k, v in reply.get("core", {}).items() if k.startswith("drop_")}
    return reply


# ---- changes ----

def clear_conn(d, req: dict) -> dict:
    flt = _filter(req)
    if d.pair is not None and not d.pair.role.is_active:
        return {"ok": False, "error": f"this unit is {d.pair.role.state.name}: clear conn on the "
                                      f"active unit (the standby follows it)"}
    ids = [(r.creator, r.id) for r in _states(d, flt)]
    cleared = 0
    from dataplane.core import NotFound
    for i in range(0, len(ids), PAGE):
        with d.lock:
            for creator, sid in ids[i:i + PAGE]:
                try:
                    d.core.delete(creator, sid)
                    cleared += 1
                except NotFound:            # expired or closed meanwhile
                    pass
    return {"ok": True, "name": d.name, "filters": flt.as_dict(), "cleared": cleared}


def _switchover(kind: str):
    def handler(d, req: dict) -> dict:
        if d.pair is None:
            return {"ok": False, "error": "this unit runs standalone: no [failover] in its config"}
        r = d.pair.switchover.post(kind, str(req.get("reason") or "operator"))
        if not r.done.wait(SWITCHOVER_WAIT_S):
            return {"ok": False, "error": f"no answer from the replication loop in "
                                          f"{SWITCHOVER_WAIT_S:g} s"}
        if r.error:
            return {"ok": False, "error": r.error, "role": d.pair.role.state.name}
        return {"ok": True, "name": d.name, "result": r.result, "role": d.pair.role.state.name}
    return handler


COMMANDS = {
    "show_failover": show_failover,
    "show_history": show_history,
    "show_conn": show_conn,
    "show_xlate": show_xlate,
    "show_arp": show_arp,
    "show_counters": show_counters,
    "clear_conn": clear_conn,
    "failover_active": _switchover("active"),
    "failover_standby": _switchover("standby"),
}


def answer(d, req: dict) -> dict | None:
    """The answer to ``req``, or None when its ``cmd`` is not one of COMMANDS."""
    handler = COMMANDS.get(req.get("cmd"))
    if handler is None:
        return None
    try:
        return handler(d, req)
    except connfilter.FilterError as e:
        return {"ok": False, "error": str(e), "kind": "filter"}
