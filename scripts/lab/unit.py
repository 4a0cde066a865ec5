"""How the lab starts a unit (fw-a, fw-b) in its namespace: one function, `start_unit`.

The unit is the natpair daemon, `python -m dataplane.cli run --config <run dir>/<unit>.toml`,
started inside the namespace <prefix><unit>, logging to <run dir>/<unit>.log, its control
socket <run dir>/<unit>.sock (run dir: /run/natpair-lab/<prefix>/). It installs its own rules
inside its namespace; it is ready when its NFQUEUE rule is there and its control socket answers
(the socket is bound last, after the rules and the sysctls).

With ``failover=True`` the unit joins the pair (``failover_config``): its failover leg fo0 on
fo-sw, UDP port FAILOVER_PORT on its fo0 address (the stream; its beat process's hellos use
FAILOVER_PORT + 1 there and FAILOVER_PORT on the data legs), the peer the other unit's, one key for the
lab in <run dir>/failover.key, fw-a of priority 110 and fw-b 100, hellos on the data legs too
(peer_inside, peer_outside: the other unit's own in0 and out0 addresses), virtual MACs on (the
default), and the topology's virtual addresses (inside gateway, NAT address) as [[failover.vip]].
"""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dataplane import config
from dataplane.daemon import request

from . import nsexec
from .build import run_dir
import secrets

from .topology import (FAILOVER_LEG, FW_A, INSIDE_LEG, INSIDE_NET, NAT_ADDR, OUTSIDE_LEG, UNITS,
                       Topology)

FAILOVER_PORT = 7788
PRIORITY = {FW_A: 110}          # the others: 100
POLL_MS, HOLD_MS = config.FAILOVER_POLL_MS, config.FAILOVER_HOLD_MS
LEG_SIDE = {INSIDE_LEG: "inside", OUTSIDE_LEG: "outside"}

REPO = Path(__file__).resolve().parents[2]


@dataclass
class StartedUnit:
    name: str
    proc: subprocess.Popen
    config: Path
    log: Path
    socket: Path


def socket_path(topo: Topology, name: str) -> Path:
    return run_dir(topo.prefix) / f"{name}.sock"


def config_path(topo: Topology, name: str) -> Path:
    return run_dir(topo.prefix) / f"{name}.toml"


def unit_config(topo: Topology, name: str, feed: str = "c", extra: str = "",
                ports: tuple[int, int] = (1024, 65535), *, batch: int | None = None,
                drain_us: int | None = None) -> str:
    """The unit's TOML config in the lab: [unit] [interfaces] [nat] (NAT_ADDR, `ports`) [feed]
    (`batch`, `drain_us` when given) [control], then `extra`, a TOML fragment appended as it
    is ([[nat.static]], [timeouts])."""
    return (
        f"# natpair unit {name} in the lab {topo.prefix}*: written by scripts/lab/unit.py\n"
        f"[unit]\nname = \"{name}\"\nnetns = \"{topo.ns(name)}\"\n\n"
        f"[interfaces]\ninside = \"{INSIDE_LEG}\"\noutside = \"{OUTSIDE_LEG}\"\n\n"
        f"[nat]\npool = [\"{NAT_ADDR}\"]\nports = [{ports[0]}, {ports[1]}]\n\n"
        f"[feed]\nkind = \"{feed}\"\n" + (f"batch = {batch}\n" if batch else "")
        + (f"drain_us = {drain_us}\n" if drain_us is not None else "") + "\n"
        # Per lab, so fw-a of `make lab` and fw-a of a test run do not share a socket.
        f"[control]\nsocket = \"{socket_path(topo, name)}\"\n"
        + (f"\n{extra}" if extra else "")
    )


def key_file(topo: Topology) -> Path:
    """The lab's failover key (made once per lab run)."""
    path = run_dir(topo.prefix) / "failover.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32) + "\n")
        path.chmod(0o600)
    return path


def failover_config(topo: Topology, name: str, poll_ms: int = POLL_MS, hold_ms: int = HOLD_MS,
                    extra: str = "") -> str:
    """The [failover] section of unit `name` (see the module docstring)."""
    peer = next(u for u in UNITS if u != name)
    local = topo.link(name, FAILOVER_LEG).addrs[0].split("/")[0]
    remote = topo.link(peer, FAILOVER_LEG).addrs[0].split("/")[0]
    vips = "".join(f'\n[[failover.vip]]\nleg = "{LEG_SIDE[v.leg]}"\naddress = "{v.addr}"\n'
                   for v in topo.virtuals)
    peer_legs = "".join(f'peer_{side} = "{topo.link(peer, leg).addrs[0].split("/")[0]}"\n'
                        for leg, side in LEG_SIDE.items())
    return (f'[failover]\ninterface = "{FAILOVER_LEG}"\nlocal = "{local}:{FAILOVER_PORT}"\n'
            f'peer = "{remote}:{FAILOVER_PORT}"\nkey_file = "{key_file(topo)}"\n{peer_legs}'
            f'priority = {PRIORITY.get(name, 100)}\npoll_ms = {poll_ms}\nhold_ms = {hold_ms}\n'
            f'{extra}{vips}')


def start_unit(topo: Topology, name: str, feed: str = "c", log=print,
               ready_s: float = 10.0, extra_config: str = "",
               ports: tuple[int, int] = (1024, 65535), batch: int | None = None,
               drain_us: int | None = None, failover: bool = False,
               failover_extra: str = "", poll_ms: int = POLL_MS,
               hold_ms: int = HOLD_MS) -> StartedUnit:
    """Start the natpair daemon of unit `name` in its namespace; return once it is ready.
    `extra_config`, `ports`, `batch` and `drain_us` go to its config (unit_config); with
    `failover` it joins the pair (failover_config with `poll_ms`/`hold_ms`, plus
    `failover_extra` keys)."""
    if topo.node(name).role != "unit":
        raise ValueError(f"{name!r} is not a unit")
    rdir = run_dir(topo.prefix)
    rdir.mkdir(parents=True, exist_ok=True)
    cfg = config_path(topo, name)
    if failover:
        extra_config = (extra_config + "\n" if extra_config else "") + failover_config(
            topo, name, poll_ms, hold_ms, extra=failover_extra)
    cfg.write_text(unit_config(topo, name, feed, extra_config, ports, batch=batch,
                               drain_us=drain_us))
    logf = rdir / f"{name}.log"
    with open(logf, "ab") as out:
        proc = nsexec.popen(topo.ns(name),
                            [sys.executable, "-m", "dataplane.cli", "run", "--config", str(cfg)],
                            cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                            start_new_session=True)
    _wait_ready(topo, name, proc, logf, ready_s)
    log(f"lab: {name}: natpair daemon running, pid {proc.pid}, config {cfg}, log {logf}")
    return StartedUnit(name, proc, cfg, logf, socket_path(topo, name))


def wait_role(topo: Topology, name: str, roles: tuple[str, ...], timeout_s: float = 20.0) -> dict:
    """Poll unit `name`'s status until its role is one of `roles`; its last status."""
    deadline = time.monotonic() + timeout_s
    st: dict = {}
    while time.monotonic() < deadline:
        try:
            st = request(str(socket_path(topo, name)), "status", timeout=1.0)
        except (OSError, ValueError):
            st = {}
        if st.get("role") in roles:
            return st
        time.sleep(0.05)
    raise RuntimeError(f"{name}: role {st.get('role')!r}, not {'/'.join(roles)} after "
                       f"{timeout_s} s: {st.get('failover', {}).get('bulk_recv')}")


def _wait_ready(topo: Topology, name: str, proc: subprocess.Popen, logf: Path,
                ready_s: float) -> None:
    """Ready = its NFQUEUE rules are in its namespace (it installs them itself) and its control
    socket answers: a socket of a crashed run may still be there, so it must answer."""
    deadline = time.monotonic() + ready_s
    sock = str(socket_path(topo, name))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = logf.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name}: the daemon exited with {proc.returncode}:\n{tail}")
        rules = nsexec.run(topo.ns(name), ["iptables-save"], timeout=5).stdout
        if "NFQUEUE" in rules and _answers(sock):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name}: not ready in {topo.ns(name)} after {ready_s} s: no NFQUEUE "
                       f"rule or no answer on {sock} (log: {logf})")


def _answers(sock: str) -> bool:
    try:
        return bool(request(sock, "status", timeout=1.0).get("ok"))
    except (OSError, ValueError):
        return False
