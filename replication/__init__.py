"""Replication of the core's tables to the standby.

wire (the datagram format), replay (anti-replay window), counters (drop/outcome counters),
transport (reliable batched stream, FTFW-style), udp (the socket under it), fsm (the state
machine engine), role (the failover role), detect (failure detection from hellos and
carrier), bulk (the bulk sync of a joining standby), pair (all of them for one unit of the
pair: what the daemon runs with [failover]).
"""
