"""What a unit of a pair needs from its own namespace, made from its config.

Owns the small factories the daemon calls when ``[failover]`` is set, so that
dataplane/daemon.py only wires them together:

- ``data_legs(cfg)``: for each leg with ``peer_<leg>``: (leg name "inside"/"outside",
  interface, our own address on that leg in the peer's subnet (never a virtual one),
  the peer's); our address is looked up in the namespace (replication.datapath).
- ``hello_accepts(cfg)``: the rules that let those hellos past the NFQUEUE rule
  (dataplane.rules.HelloAccept), one per data leg.
- ``data_hellos(cfg)``: the replication.datapath.DataHellos sockets (None without
  data legs), on the failover port (a Pair without the beat process).
- ``beat(cfg)``: the hello process (replication.beat.Beat) of every path: the failover
  link on ``Failover.beat_local``/``beat_peer`` (the failover port + 1), the data legs
  as ``data_hellos`` would (the failover port, the port ``hello_accepts`` lets through).
- ``carrier_watch(cfg)``: replication.carrier.CarrierWatch of the failover leg.
- ``virtual_addresses(cfg)``: dataplane.vips.VirtualAddresses of the ``[[failover.vip]]``
  entries, with dataplane.vmac.VirtualMacs when virtual MACs are on (their own-MAC state
  file beside the control socket: ``<socket>.mac.json``).

A data leg without an own address in the peer's subnet is refused at start
(RuntimeError naming the key), before anything is changed.
"""
from __future__ import annotations

from pathlib import Path

from dataplane.config import Config
from dataplane.rules import HelloAccept


def _leg_ifnames(cfg: Config) -> dict[str, str]:
    return {"inside": cfg.interfaces.inside, "outside": cfg.interfaces.outside}


def data_legs(cfg: Config) -> list[tuple[str, str, str, str]]:
    from replication.datapath import local_address

    fo = cfg.failover
    ifnames = _leg_ifnames(cfg)
    vips = {v.address.split("/")[0] for v in fo.vips}
    out = []
    for leg, peer in fo.peer_legs:
        try:
            own = local_address(ifnames[leg], peer, exclude=vips)
        except RuntimeError as e:
            raise RuntimeError(f"{cfg.path}: failover.peer_{leg}: {e}") from None
        out.append((leg, ifnames[leg], own, peer))
    return out


def hello_accepts(cfg: Config) -> tuple[HelloAccept, ...]:
    port = cfg.failover.local[1]
    return tuple(HelloAccept(ifname, peer, own, port) for _, ifname, own, peer in data_legs(cfg))


def data_hellos(cfg: Config):
    from replication.datapath import DataHellos

    legs = data_legs(cfg)
    if not legs:
        return None
    fo = cfg.failover
    port, peer_port = fo.local[1], fo.peer[1]
    return DataHellos(fo.key, cfg.unit.creator_id,
                      [(leg, (own, port), (peer, peer_port)) for leg, _, own, peer in legs])


def beat(cfg: Config, release: dict | None = None):
    """The hello process; ``release``: what it gives back if the daemon dies (dataplane.release)."""
    from replication.beat import Beat
    from replication.detect import FAILOVER

    fo = cfg.failover
    port, peer_port = fo.local[1], fo.peer[1]
    paths = [(FAILOVER, fo.beat_local, fo.beat_peer)]
    paths += [(leg, (own, port), (peer, peer_port)) for leg, _, own, peer in data_legs(cfg)]
    return Beat(fo.key, cfg.unit.creator_id, paths, release=release)


def carrier_watch(cfg: Config):
    from replication.carrier import CarrierWatch

    return CarrierWatch(cfg.failover.interface)


def virtual_addresses(cfg: Config):
    from dataplane.vips import VirtualAddresses
    from dataplane.vmac import VirtualMacs

    fo = cfg.failover
    ifnames = _leg_ifnames(cfg)
    macs = None
    if fo.virtual_macs:
        macs = VirtualMacs([(ifnames[leg], mac) for leg, mac in fo.virtual_macs],
                           Path(cfg.control.socket).with_suffix(".mac.json"))
    return VirtualAddresses([(ifnames[v.leg], v.address) for v in fo.vips], macs)
