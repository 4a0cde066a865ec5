"""The unit's own kernel state: its iptables rules, its sysctls, its interfaces.

Everything here acts on the network namespace of the calling process (the
daemon enters its namespace first), and touches only what natpair owns:

- rules: one chain ``NATPAIR_PRE`` in the raw table, jumped to from
  PREROUTING for packets arriving on the inside and the outside leg; it does
  ``-j CT --notrack`` (kernel conntrack stays out of the way) then
  ``-j NFQUEUE --queue-num N`` (fail closed: ``--queue-bypass`` only when
  configured). A pair's data-path hellos (``HelloAccept``: UDP from the peer's own
  address to ours, on the failover port, on one leg) are accepted between the two:
  they are for the unit itself, not traffic to translate. Installed and removed atomically with ``iptables-restore
  --noflush``; ``remove_rules`` deletes the jumps to the chain found in
  ``iptables-save`` (whatever legs a crashed run used), flushes and deletes the
  chain, and does nothing when there is nothing.
- sysctls (``Sysctls``): ip_forward, rp_filter (all and per leg: a translated
  packet arrives with a source the reverse path would not choose) and
  accept_local per leg when a NAT address is local to the unit; written via
  /proc/sys, the originals kept in a state file so that a restart after a crash
  restores them before taking new ones.
- legs (``Legs``, ``find_legs``): interface indexes and local addresses, via
  pyroute2 (never the ``ip`` tool).
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
from pathlib import Path

from pyroute2 import IPRoute

CHAIN = "NATPAIR_PRE"
TABLE = "raw"


class KernelError(RuntimeError):
    """A kernel change (rules, sysctls) or lookup failed."""


# ---- interfaces ----

@dataclasses.dataclass(frozen=True)
class Legs:
    inside: str
    outside: str
    inside_index: int
    outside_index: int
    local_addresses: frozenset[str]

    @property
    def sides(self) -> dict[int, str]:
        """ifindex -> side, as the feeds take it."""
        return {self.inside_index: "inside", self.outside_index: "outside"}


def find_legs(inside: str, outside: str) -> Legs:
    """Look both legs up in the current namespace; KernelError if one is missing."""
    with IPRoute() as ipr:
        idx = {}
        for name in (inside, outside):
            found = ipr.link_lookup(ifname=name)
            if not found:
                raise KernelError(f"interface {name!r} not found in this network namespace")
            idx[name] = found[0]
        local = frozenset(a.get("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET))
    return Legs(inside, outside, idx[inside], idx[outside], local)


def link_mtu(name: str) -> int | None:
    """The MTU of interface ``name`` in the current namespace (None: no such interface)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        return ipr.get_links(found[0])[0].get_attr("IFLA_MTU") if found else None


# ---- iptables ----

def iptables_version() -> str:
    """What `iptables-restore --version` says, e.g. 'iptables-restore v1.8.9 (nf_tables)'."""
    return _run(["iptables-restore", "--version"]).strip()


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        r = subprocess.run(argv, input=stdin, text=True, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KernelError(f"{argv[0]}: {e}") from None
    if r.returncode != 0:
        raise KernelError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def _saved() -> str:
    return _run(["iptables-save", "-t", TABLE])


def own_rules(saved: str | None = None) -> list[str]:
    """Our lines in `iptables-save -t raw`: the chain, its rules, the jumps to it."""
    saved = _saved() if saved is None else saved
    return [ln for ln in saved.splitlines()
            if ln.startswith(f":{CHAIN} ") or ln.startswith(f"-A {CHAIN} ")
            or (ln.startswith("-A PREROUTING ") and ln.endswith(f"-j {CHAIN}"))]


def _removal(saved: str) -> list[str]:
    lines = ["-D" + ln[2:] for ln in saved.splitlines()
             if ln.startswith("-A PREROUTING ") and ln.endswith(f"-j {CHAIN}")]
    if any(ln.startswith(f":{CHAIN} ") for ln in saved.splitlines()):
        lines += [f"-F {CHAIN}", f"-X {CHAIN}"]
    return lines


@dataclasses.dataclass(frozen=True)
class HelloAccept:
    leg: str            # interface name
    src: str            # the peer's own address on that leg
    dst: str            # ours
    port: int           # UDP destination port


def rules_script(legs: Legs, queue: int, bypass: bool = False, saved: str = "",
                 hellos: tuple[HelloAccept, ...] = ()) -> str:
    """One iptables-restore transaction: drop leftovers of an earlier run, then ours."""
    # the chain declaration first (the canonical order for both iptables
    # backends; with --noflush it creates or flushes the chain), then the
    # leftover jumps out, then ours in
    body = [f":{CHAIN} - [0:0]", f"-F {CHAIN}"]
    body += [ln for ln in _removal(saved) if ln.startswith("-D ")]
    for leg in (legs.inside, legs.outside):
        body.append(f"-A PREROUTING -i {leg} -j {CHAIN}")
    body.append(f"-A {CHAIN} -j CT --notrack")
    for h in hellos:
        body.append(f"-A {CHAIN} -i {h.leg} -s {h.src}/32 -d {h.dst}/32 -p udp -m udp "
                    f"--dport {h.port} -j ACCEPT")
    body.append(f"-A {CHAIN} -j NFQUEUE --queue-num {queue}" + (" --queue-bypass" if bypass else ""))
    return "\n".join([f"*{TABLE}", *body, "COMMIT", ""])


def install_rules(legs: Legs, queue: int, bypass: bool = False,
                  hellos: tuple[HelloAccept, ...] = ()) -> None:
    """Install our chain and jumps atomically, replacing leftovers of a crashed run."""
    _run(["iptables-restore", "--noflush"], rules_script(legs, queue, bypass, _saved(), hellos))


def remove_rules() -> bool:
    """Remove exactly our chain and the jumps to it; False if there was nothing."""
    lines = _removal(_saved())
    if not lines:
        return False
    _run(["iptables-restore", "--noflush"], "\n".join([f"*{TABLE}", *lines, "COMMIT", ""]))
    return True


# ---- sysctls ----

def wanted_sysctls(legs: Legs, nat_addresses: list[str],
                   virtual_addresses: list[str] = ()) -> dict[str, str]:
    """What the unit needs, as /proc/sys paths relative to /proc/sys.

    rp_filter off (all and both legs; the kernel uses the max of all and the
    leg): a source-translated packet arrives on the inside leg with a source
    that routes out of the outside leg. accept_local on both legs when a NAT
    address is one of the unit's own: the translated packet then carries a
    local source, which the kernel otherwise drops as a martian. A pair's virtual
    addresses count as the unit's own: a standby holds them after a takeover.
    """
    want = {"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/rp_filter": "0"}
    local = any(a in legs.local_addresses or a in virtual_addresses for a in nat_addresses)
    for leg in (legs.inside, legs.outside):
        want[f"net/ipv4/conf/{leg}/rp_filter"] = "0"
        if local:
            want[f"net/ipv4/conf/{leg}/accept_local"] = "1"
    return want


class Sysctls:
    """Set sysctls, remember the originals (in memory and in state_file), restore them."""

    ROOT = Path("/proc/sys")

    def __init__(self, state_file: str | Path):
        self.state_file = Path(state_file)
        self.saved: dict[str, str] = {}

    def read(self, key: str) -> str:
        return (self.ROOT / key).read_text().strip()

    def _write(self, key: str, value: str) -> None:
        try:
            (self.ROOT / key).write_text(value + "\n")
        except OSError as e:
            raise KernelError(f"sysctl {key.replace('/', '.')}={value}: {e.strerror}") from None

    def recover(self) -> dict[str, str]:
        """Restore what a crashed run left in state_file; returns what it restored."""
        if not self.state_file.exists():
            return {}
        try:
            old = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            old = {}
        done = {}
        for key, value in old.items():
            if (self.ROOT / key).exists():
                self._write(key, value)
                done[key] = value
        self.state_file.unlink(missing_ok=True)
        return done

    def apply(self, want: dict[str, str]) -> None:
        """Read every original first, persist them, then write (ip_forward last)."""
        originals = {key: self.read(key) for key in want}
        self.saved = originals
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(originals))
        os.replace(tmp, self.state_file)
        for key in sorted(want, key=lambda k: k == "net/ipv4/ip_forward"):
            self._write(key, want[key])

    def restore(self) -> None:
        """Put the originals back (ip_forward first: no forwarding once we stop)."""
        errors = []
        for key in sorted(self.saved, key=lambda k: k != "net/ipv4/ip_forward"):
            try:
                if (self.ROOT / key).exists():
                    self._write(key, self.saved[key])
            except KernelError as e:
                errors.append(str(e))
        self.saved = {}
        self.state_file.unlink(missing_ok=True)
        if errors:
            raise KernelError("; ".join(errors))
