"""How ``natpair`` prints the daemon's answers for a person (``--json`` prints them as they are).

Owns one function per answer of dataplane/show.py: ``failover``, ``history``, ``conn``,
``xlate``, ``arp``, ``counters``; each takes the answer dict and returns the text. The layout
follows what an ASA operator reads in ``show failover`` / ``show conn`` / ``show xlate``.
"""
from __future__ import annotations

from replication.tables import FIELDS, TABLES


def _ms(v) -> str:
    return "n/a" if v is None else (f"{v:g} ms" if isinstance(v, (int, float)) else str(v))


def _dur(ms: int) -> str:
    s = ms / 1000
    if s < 120:
        return f"{s:.1f} s"
    h, rem = divmod(int(s), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}"


def failover(r: dict) -> str:
    if not r.get("failover"):
        return f"Failover Off (unit {r['name']} runs standalone: no [failover] in its config)"
    link, peer, lf = r["link"], r["peer"], r["last_failover"]
    tr, lag = r["transport"], r["lag"]
    out = [f"Failover On (unit {r['name']}, unit id {r['unit_id']}, priority {r['priority']}, "
           f"preempt {'on' if r['preempt'] else 'off'})",
           f"Failover link: {link['interface']} {link['local']} <-> {link['peer']} "
           f"({link['health']}, carrier {'up' if link['carrier_up'] else 'down'}, "
           f"last hello {_ms(link['last_hello_ms_ago'])} ago)",
           f"Unit poll {r['poll_ms']} ms, hold {r['hold_ms']} ms",
           "Last failover: " + ("none" if lf is None else
                                f"{lf['time']} {lf['from']} -> {lf['to']} ({lf['event']}: {lf['reason']})")
           + f"; failovers {r['failovers']}",
           f"        This host: {r['name']} - {r['role']}"
           + (" (yielding)" if r["yielding"] else "") + (" (wants active)" if r["wants_active"] else ""),
           f"                in this state {_dur(r['in_state_ms'])} (since {r['since']})",
           "        Other host: " + ("not heard" if peer is None else
                                     f"{peer['state']} (priority {peer['priority']}, unit id "
                                     f"{peer['unit_id']})" + (" (yielding)" if peer["yielding"] else "")),
           "",
           "Stateful Failover Logical Update Statistics",
           f"        Link : {link['interface']} ({link['health']})",
           "        " + f"{'Stateful Obj':<16}" + "".join(f"{f:<11}" for f in FIELDS)]
    for t in TABLES:
        c = r["tables"].get(t, {})
        out.append("        " + f"{t:<16}" + "".join(f"{c.get(f, 0):<11}" for f in FIELDS))
    out += ["",
            "        Logical Update Queue: " f"pending {tr['pending']}, retransmit queue (unacked) "
            f"{tr['unacked']}, offered waiting {tr['offered_waiting']}",
            f"        Stream: {tr['tx_msgs']} msgs / {tr['tx_records']} records sent "
            f"({tr['tx_coalesced']} changes coalesced into a later one), "
            f"{tr['tx_retransmits']} retransmits, {tr['tx_errors']} send errors; "
            f"{tr['rx_records']} records received, {tr['rx_duplicates']} duplicates",
            f"        Link datagrams: {link['rx_ok']} accepted, {link['rx_dropped']} dropped"
            + ("" if not link["drops"] else " (" + ", ".join(f"{k} {v}" for k, v in
                                                             sorted(link["drops"].items())) + ")"),
            "        Replication lag (drained on the active -> acked by the standby): "
            + ("n/a (no acked change yet)" if not lag.get("count") else
               f"p50 {_ms(lag['p50_ms'])}, p99 {_ms(lag['p99_ms'])}, max {lag['max_ms']:.2f} ms, "
               f"{lag['count']} changes")]
    bs, br = r["bulk_send"], r["bulk_recv"]
    if bs.get("request") or bs.get("sent"):
        out.append(f"        Bulk sync sent: {bs['state']}, {bs['sent']}/{bs['total']} states, "
                   f"{bs['elapsed_ms']} ms")
    if br.get("request"):
        out.append(f"        Bulk sync received: {br['state']}, {br['received']}/{br['total']} states "
                   f"({br['percent']} %), {br['elapsed_ms']} ms")
    return "\n".join(out)


def history(r: dict) -> str:
    if not r.get("failover"):
        return f"Failover Off (unit {r['name']} runs standalone)"
    rows = [("time", "from", "event", "to", "reason")] + [
        (t["time"], t["from"], t["event"], t["to"], t["reason"]) for t in r["transitions"]]
    return _table(rows, title=f"Failover history of {r['name']} (oldest first)")


def _table(rows: list[tuple], title: str = "") -> str:
    w = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = [title] if title else []
    for row in rows:
        lines.append("  ".join(str(c).ljust(w[i]) for i, c in enumerate(row)).rstrip())
    return "\n".join(lines)


def conn(r: dict) -> str:
    flt = " ".join(f"{k} {v}" for k, v in r["filters"].items())
    head = (f"{r['total']} in use, {r['matched']} matched" + (f" ({flt})" if flt else "")
            + (f", {r['shown']} shown" if r["shown"] < r["matched"] else ""))
    by = ", ".join(f"{k} {v}" for k, v in sorted(r["by_state"].items(), key=lambda kv: -kv[1]))
    lines = [head, f"by state: {by or '-'}"]
    for c in r["conns"]:
        i, o = c["initiator"], c["responder"]
        lines.append(f"{c['protocol'].upper()} {i['side']} {i['address']} -> {o['side']} "
                     f"{o['address']}, seen as {c['initiator_seen_as']} -> {c['responder_seen_as']}, "
                     f"{c['state']}, age {c['age_s']} s, expires in {c['expires_in_s']} s, "
                     f"bytes {c['bytes'][0]}/{c['bytes'][1]}")
    return "\n".join(lines)


def xlate(r: dict) -> str:
    lines = [f"{r['in_use']} in use, {r['mappings']} dynamic mappings in the core, "
             f"{len(r['static'])} static"]
    for x in r["xlates"]:
        kind = "PAT" if x["kind"] == "source" else "port forward"
        lines.append(f"{x['protocol'].upper()} {kind} from {x['real']} to {x['mapped']}, "
                     f"{x['conns']} conn{'s' if x['conns'] != 1 else ''}")
    for s in r["static"]:
        lines.append(f"{s['protocol'].upper()} static from {s['real']} to {s['mapped']}")
    return "\n".join(lines)


def arp(r: dict) -> str:
    rows = [("leg", "interface", "address", "lladdr", "state")] + [
        (n["leg"], n["interface"], n["address"], n["lladdr"] or "-", n["state"])
        for n in r["neighbours"]]
    return _table(rows)


def counters(r: dict) -> str:
    lines = []
    for group in ("core", "feed", "daemon", "replication"):
        for name, value in sorted(r.get(group, {}).items()):
            lines.append(f"{group}.{name} {value}")
    return "\n".join(lines)
