"""What the takeover sends, checked without root: the gratuitous ARP frames built at start
(dataplane.vips.garp_frames) are ARP announcements by the bytes (RFC 5227 section 3: sender
and target protocol address both the announced one), read with struct, not scapy; and the
netlink requests prepared for the takeover (dataplane.netlink_batch) decode, with pyroute2's
parser, to the changes meant (MAC, neighbour entry, address), each with its own sequence
number and an ack asked for.
"""
import socket
import struct

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK, RTM_NEWNEIGH
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from dataplane.netlink_batch import NetlinkBatch
from dataplane.vips import garp_frames

MAC, IP = "02:4e:50:01:00:01", "198.18.1.1"
ETH_ARP, HTYPE_ETHER, PTYPE_IPV4 = 0x0806, 1, 0x0800
ETH = struct.Struct("!6s6sH")
ARP = struct.Struct("!HHBBH6s4s6s4s")


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def test_garp_frames_are_arp_announcements_from_the_mac():
    frames = garp_frames(MAC, IP)
    assert len(frames) == 2
    ops = []
    for f in frames:
        assert len(f) == ETH.size + ARP.size            # 42: the NIC pads, not us
        dst, src, ethertype = ETH.unpack_from(f)
        assert (dst, src, ethertype) == (b"\xff" * 6, mac_bytes(MAC), ETH_ARP)
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = ARP.unpack_from(f, ETH.size)
        assert (htype, ptype, hlen, plen) == (HTYPE_ETHER, PTYPE_IPV4, 6, 4)
        assert sha == mac_bytes(MAC)
        assert spa == tpa == socket.inet_aton(IP)       # gratuitous: sender == target
        assert tha == (b"\x00" * 6 if op == 1 else b"\xff" * 6)
        ops.append(op)
    assert ops == [1, 2]                                # a who-has and an is-at


def test_garp_frames_differ_by_mac_and_address():
    a, b = garp_frames(MAC, IP), garp_frames("02:4e:50:01:00:02", "198.19.1.1")
    assert a != b and ETH.unpack_from(b[0])[1] == mac_bytes("02:4e:50:01:00:02")


def _header(data: bytes) -> tuple[int, int, int, int]:
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", data)
    assert length == len(data)
    return length, kind, flags, seq


def test_prepared_netlink_requests_decode_to_the_change_meant():
    batch = NetlinkBatch()          # a netlink socket: no privilege needed to open one
    try:
        link, neigh, addr = (batch.link_address(7, MAC),
                             batch.neigh_replace(7, "198.18.1.10", "02:00:00:00:00:0a", 0x04),
                             batch.addr_add(7, IP, 24))
    finally:
        batch.close()
    seqs = [seq for seq, _ in (link, neigh, addr)]
    assert len(set(seqs)) == 3

    _, kind, flags, seq = _header(link[1])
    assert (kind, flags, seq) == (RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, link[0])
    m = ifinfmsg(link[1])
    m.decode()
    assert m["index"] == 7 and m.get_attr("IFLA_ADDRESS") == MAC

    _, kind, flags, seq = _header(neigh[1])
    assert (kind, seq) == (RTM_NEWNEIGH, neigh[0])
    assert flags == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    m = ndmsg(neigh[1])
    m.decode()
    assert (m["family"], m["ifindex"], m["state"]) == (socket.AF_INET, 7, 0x04)
    assert (m.get_attr("NDA_DST"), m.get_attr("NDA_LLADDR")) == ("198.18.1.10", "02:00:00:00:00:0a")

    _, kind, flags, seq = _header(addr[1])
    assert (kind, seq) == (RTM_NEWADDR, addr[0]) and flags & NLM_F_ACK
    m = ifaddrmsg(addr[1])
    m.decode()
    assert (m["index"], m["prefixlen"], m.get_attr("IFA_LOCAL")) == (7, 24, IP)
