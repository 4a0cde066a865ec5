"""Replication of the core's tables to the standby.

wire (the datagram format), replay (anti-replay window), counters (drop/outcome counters),
transport (reliable batched stream, FTFW-style), udp (the socket under it). Bulk sync and
the failover role land with the rest of the failover issue.
"""
