"""How a unit's log line looks: one line per event, ``key=value`` after a fixed prefix, so a
journal or a log shipper (logfmt parsers, Vector, Promtail, journald's MESSAGE) can split it:

    2026-11-26T10:12:46.375Z WARNING natpair[fw-b] takeover step=core_active states=6
    <UTC time, ms>           <level> natpair[<unit>] <event> <key>=<value> ...

A value with a space, a quote or an ``=`` is JSON-quoted. Owns ``KvFormatter``, which also
brings the lines of modules that log in their own words (replication's state machines:
``fsm-name STATE/EVENT -> NEW reason=...``) into that shape without touching them:

    transition machine=<name> from=<state> event=<event> to=<state> reason=...
    refused machine=<name> state=<state> event=<event> reason=... refused_total=...
    <event> [src=<who>] [msg="<free words>"] key=value ...     (any other line)

and puts an exception's text, on one line, in ``exc=``.
"""
from __future__ import annotations

import json
import logging
import re
import time

TRANSITION = re.compile(r"^(\S+) (\w+)/(\w+) -> (\w+)(?: (.*))?$", re.S)
REFUSED = re.compile(r"^(\S+) (\w+)/(\w+) refused(?: (.*))?$", re.S)
EVENT = re.compile(r"^[a-z_]+$")
TOKEN = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)|("(?:[^"\\]|\\.)*"|\S+)')
LINE = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) '
                  r'natpair\[(\S+)\] ([a-z_]+)((?: \w+=(?:"(?:[^"\\]|\\.)*"|[^\s"]\S*))*)$')


def quote(v) -> str:
    s = str(v)
    return json.dumps(s) if (not s or any(c in s for c in ' "=\n\t\\')) else s


def normalise(msg: str) -> str:
    """Any message as ``event key=value ...``."""
    m = TRANSITION.match(msg)
    if m:
        head = (f"transition machine={quote(m[1])} from={m[2]} event={m[3]} to={m[4]}")
        return head + _fields(m[5] or "")
    m = REFUSED.match(msg)
    if m:
        return f"refused machine={quote(m[1])} state={m[2]} event={m[3]}" + _fields(m[4] or "")
    first, _, rest = msg.partition(" ")
    if EVENT.match(first):
        return first + _fields(rest)
    return f"log src={quote(first)}" + _fields(rest)


def _fields(text: str) -> str:
    kvs, words = [], []
    for m in TOKEN.finditer(text.replace("\n", " ")):
        if m[1]:
            kvs.append(f"{m[1]}={m[2] if m[2].startswith(chr(34)) else quote(m[2])}")
        else:
            words.append(m[3])
    out = (f" msg={quote(' '.join(words))}" if words else "")
    return out + "".join(" " + kv for kv in kvs)


class KvFormatter(logging.Formatter):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = (f"{t}.{int(record.msecs):03d}Z {record.levelname} natpair[{self.unit}] "
                f"{normalise(record.getMessage())}")
        if record.exc_info:
            line += f" exc={quote(self.formatException(record.exc_info))}"
        return line
