"""The incumbent a Linux user picks today, as a lab unit: kernel NAT (iptables SNAT to the NAT
address, with conntrack) + conntrackd (FTFW over the failover leg) + keepalived (VRRPv3), the
Debian packages. One function starts it in a unit's namespace: `start_incumbent`.

Per unit, in the lab's run dir (/run/natpair-lab/<prefix>/): <unit>-conntrackd.conf, its
lock file, control socket and log; <unit>-keepalived.conf, its pid files and log;
<unit>-notify.sh (what keepalived runs on a role change: the primary-backup.sh that
conntrack-tools ships, shortened: on MASTER commit the external cache into the kernel
(-c), flush the caches (-f), resync the internal cache from the kernel (-R) and send a bulk
update (-B); on BACKUP shorten the kernel's timers (-t) and ask the master for a resync (-n)).

Roles: both units start as BACKUP with nopreempt, fw-a priority 110, fw-b 100; the first
one started alone becomes MASTER after the master-down interval. One VRRP instance on the
inside leg holds both virtual addresses (the inside gateway on in0, the NAT address on
out0), advert_int `advert_s` (VRRPv3 allows 0.01 s, its fastest), its VRRP process in real
time (vrrp_rt_priority, as natpair's replication thread). keepalived sends the
gratuitous ARPs on takeover. The virtual addresses are keepalived's: `start_incumbent`
removes them from the unit first if the lab put them there.
"""
from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from . import nsexec
from .build import run_dir
from .topology import (FAILOVER_LEG, FW_A, INSIDE_LEG, INSIDE_NET, NAT_ADDR, OUTSIDE_LEG,
                       UNITS, Topology)

CONNTRACKD_PORT = 3780
VRID = 51
PRIORITY = {FW_A: 110}          # the others: 100
UDP_TIMEOUT_S = 3600            # so that the bench's filled UDP states live through the run
TCP_ESTABLISHED_S = 3600
# keepalived's VRRP process in real time, as natpair's replication thread (SCHED_FIFO 10,
# dataplane/daemon.py): at 10 ms adverts on a loaded machine (a fill at up to 100k
# packets/s, other labs) it flapped between MASTER and BACKUP without it, and each BACKUP
# turn has conntrackd flush the kernel table PurgeTimeout (5 s) later (-t): the active
# table emptied under the fill
VRRP_RT_PRIORITY = 10


@dataclass
class StartedIncumbent:
    name: str
    conntrackd: subprocess.Popen
    keepalived: subprocess.Popen
    conntrackd_conf: Path


def _files(topo: Topology, name: str) -> dict[str, Path]:
    rdir = run_dir(topo.prefix)
    return {k: rdir / f"{name}-{k}" for k in (
        "conntrackd.conf", "conntrackd.lock", "conntrackd.ctl", "conntrackd.log",
        "keepalived.conf", "keepalived.pid", "vrrp.pid", "keepalived.log", "notify.sh")}


def _addr(topo: Topology, node: str, leg: str) -> str:
    return topo.link(node, leg).addrs[0].split("/")[0]


def conntrackd_config(topo: Topology, name: str, max_states: int) -> str:
    f = _files(topo, name)
    peer = next(u for u in UNITS if u != name)
    ignore = "".join(f"\t\t\tIPv4_address {a}\n" for a in
                     ["127.0.0.1"] + [_addr(topo, u, leg) for u in UNITS
                                      for leg in (INSIDE_LEG, OUTSIDE_LEG, FAILOVER_LEG)])
    return f"""# conntrackd of {name} in the lab {topo.prefix}*: written by scripts/lab/incumbent.py
Sync {{
\tMode FTFW {{
\t\tDisableExternalCache Off
\t\tCommitTimeout 1800
\t\tPurgeTimeout 5
\t}}
\tUDP {{
\t\tIPv4_address {_addr(topo, name, FAILOVER_LEG)}
\t\tIPv4_Destination_Address {_addr(topo, peer, FAILOVER_LEG)}
\t\tPort {CONNTRACKD_PORT}
\t\tInterface {FAILOVER_LEG}
\t\tSndSocketBuffer 24985600
\t\tRcvSocketBuffer 24985600
\t\tChecksum on
\t}}
}}
General {{
\tSystemd off
\tNice -20
\tHashSize {max(32768, max_states // 4)}
\tHashLimit {max(131072, 2 * max_states)}
\tLogFile {f["conntrackd.log"]}
\tSyslog off
\tLockFile {f["conntrackd.lock"]}
\tUNIX {{
\t\tPath {f["conntrackd.ctl"]}
\t}}
\tNetlinkBufferSize 2097152
\tNetlinkBufferSizeMaxGrowth 268435456
\tNetlinkEventsReliable On
\tFilter From Userspace {{
\t\tProtocol Accept {{
\t\t\tTCP
\t\t\tUDP
\t\t\tICMP
\t\t}}
\t\tAddress Ignore {{
{ignore}\t\t}}
\t}}
}}
"""


def keepalived_config(topo: Topology, name: str, advert_s: float) -> str:
    f = _files(topo, name)
    vips = "".join(f"\t\t{v.addr} dev {v.leg}\n" for v in topo.virtuals)
    notify = f["notify.sh"]
    return f"""# keepalived of {name} in the lab {topo.prefix}*: written by scripts/lab/incumbent.py
global_defs {{
\trouter_id {name}
\tvrrp_version 3
\tscript_user root
\tenable_script_security
\tvrrp_garp_master_delay 0
\tvrrp_rt_priority {VRRP_RT_PRIORITY}
}}
vrrp_instance NATPAIR_BENCH {{
\tstate BACKUP
\tnopreempt
\tinterface {INSIDE_LEG}
\tvirtual_router_id {VRID}
\tpriority {PRIORITY.get(name, 100)}
\tadvert_int {advert_s:g}
\tvirtual_ipaddress {{
{vips}\t}}
\tnotify_master "{notify} primary"
\tnotify_backup "{notify} backup"
\tnotify_fault "{notify} fault"
}}
"""


def notify_script(topo: Topology, name: str) -> str:
    f = _files(topo, name)
    ct = f"/usr/sbin/conntrackd -C {f['conntrackd.conf']}"
    return f"""#!/bin/sh
# keepalived's notify for {name}: conntrack-tools' primary-backup.sh, shortened
case "$1" in
  primary) {ct} -c; {ct} -f; {ct} -R; {ct} -B ;;
  backup)  {ct} -t; {ct} -n ;;
esac
exit 0
"""


def nat_rules() -> str:
    """iptables-restore input: source NAT of the inside net to the NAT address (kernel
    conntrack picks the port: the inside port when it is free)."""
    return ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            ":POSTROUTING ACCEPT [0:0]\n"
            f"-A POSTROUTING -s {INSIDE_NET} -o {OUTSIDE_LEG} -j SNAT --to-source {NAT_ADDR}\n"
            "COMMIT\n")


def _drop_virtuals(topo: Topology, name: str) -> None:
    with IPRoute(netns=topo.ns(name), flags=0) as ipr:
        for v in topo.virtuals:
            addr, plen = v.addr.split("/")
            idx = ipr.link_lookup(ifname=v.leg)[0]
            if any(a.get_attr("IFA_ADDRESS") == addr for a in ipr.get_addr(index=idx)):
                ipr.addr("del", index=idx, address=addr, prefixlen=int(plen))


def holds_nat_addr(topo: Topology, ipr: IPRoute) -> bool:
    """Whether the unit of netlink socket `ipr` holds the NAT address (the MASTER does)."""
    nat_addr = next(v for v in topo.virtuals if v.leg == OUTSIDE_LEG).addr.split("/")[0]
    idx = ipr.link_lookup(ifname=OUTSIDE_LEG)
    return bool(idx) and any(a.get_attr("IFA_ADDRESS") == nat_addr
                             for a in ipr.get_addr(index=idx[0]))


def holds_virtuals(topo: Topology, name: str) -> bool:
    """Whether unit `name` holds the NAT address (keepalived's MASTER does)."""
    try:
        with IPRoute(netns=topo.ns(name), flags=0) as ipr:
            return holds_nat_addr(topo, ipr)
    except OSError:
        return False


def conntrackd_stats(topo: Topology, name: str) -> dict[str, int]:
    """`conntrackd -s`: the internal and the external cache's current entries (-1: no answer)."""
    f = _files(topo, name)
    try:
        r = nsexec.run(topo.ns(name), ["conntrackd", "-C", str(f["conntrackd.conf"]), "-s"],
                       timeout=10)
    except (subprocess.TimeoutExpired, OSError):
        return {"internal": -1, "external": -1}
    return parse_conntrackd_stats(r.stdout)


def parse_conntrackd_stats(text: str) -> dict[str, int]:
    out = {"internal": -1, "external": -1}
    for cache, body in re.findall(r"cache (internal|external):\n(.*?)(?:\n\n|\Z)", text, re.S):
        m = re.search(r"current active connections:\s+(\d+)", body)
        if m:
            out[cache] = int(m[1])
    return out


def kernel_states(topo: Topology, name: str) -> int:
    """The kernel's conntrack entries in the unit's namespace (-1 when it is gone)."""
    try:
        r = nsexec.run(topo.ns(name), ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"],
                       timeout=5)
        return int(r.stdout.strip())
    except (subprocess.TimeoutExpired, OSError, ValueError):
        return -1


def start_incumbent(topo: Topology, name: str, advert_s: float = 0.01, max_states: int = 1 << 20,
                    log=print) -> StartedIncumbent:
    """Kernel NAT + conntrackd + keepalived in unit `name`'s namespace (see the module
    docstring); returns once conntrackd answers (keepalived decides the role by itself)."""
    ns, f = topo.ns(name), _files(topo, name)
    f["conntrackd.conf"].parent.mkdir(parents=True, exist_ok=True)
    _drop_virtuals(topo, name)
    for key, value in (("net.netfilter.nf_conntrack_udp_timeout", UDP_TIMEOUT_S),
                       ("net.netfilter.nf_conntrack_udp_timeout_stream", UDP_TIMEOUT_S),
                       ("net.netfilter.nf_conntrack_tcp_timeout_established", TCP_ESTABLISHED_S)):
        nsexec.sysctl(ns, key, value)
    nsexec.run(ns, ["iptables-restore"], input=nat_rules(), timeout=10, check=True)
    f["conntrackd.conf"].write_text(conntrackd_config(topo, name, max_states))
    f["keepalived.conf"].write_text(keepalived_config(topo, name, advert_s))
    f["notify.sh"].write_text(notify_script(topo, name))
    f["notify.sh"].chmod(0o755)
    f["conntrackd.lock"].unlink(missing_ok=True)
    with open(f["conntrackd.log"], "ab") as out:
        ctd = nsexec.popen(ns, ["conntrackd", "-C", str(f["conntrackd.conf"])],
                           stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                           start_new_session=True)
    deadline = time.monotonic() + 10
    while conntrackd_stats(topo, name)["internal"] < 0:
        if ctd.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name}: conntrackd did not start: "
                               f"{f['conntrackd.log'].read_text(errors='replace')[-800:]}")
        time.sleep(0.05)
    with open(f["keepalived.log"], "ab") as out:
        kad = nsexec.popen(ns, ["keepalived", "--dont-fork", "--log-console", "--vrrp",
                                "-f", str(f["keepalived.conf"]), "-p", str(f["keepalived.pid"]),
                                "-r", str(f["vrrp.pid"])],
                           stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                           start_new_session=True)
    time.sleep(0.2)
    if kad.poll() is not None:
        raise RuntimeError(f"{name}: keepalived exited with {kad.returncode}: "
                           f"{f['keepalived.log'].read_text(errors='replace')[-800:]}")
    log(f"lab: {name}: kernel NAT + conntrackd (pid {ctd.pid}) + keepalived (pid {kad.pid}, "
        f"VRRPv3 adverts {advert_s * 1000:g} ms)")
    return StartedIncumbent(name, ctd, kad, f["conntrackd.conf"])


def wait_master(topo: Topology, name: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not holds_virtuals(topo, name):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: not MASTER (no {NAT_ADDR}) after {timeout_s} s")
        time.sleep(0.01)

