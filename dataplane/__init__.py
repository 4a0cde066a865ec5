"""One unit's data plane: the feed (NFQUEUE), config and control around the C core.

core.py is the only module that touches the cffi extension ``dataplane._core``.
"""
