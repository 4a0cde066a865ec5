"""Replication of the core's tables to the standby (lands with the failover issue)."""
