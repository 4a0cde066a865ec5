"""Run a program, or write a sysctl, inside one network namespace of the lab.

`popen`/`run` start the program in a child that enters the namespace (pyroute2 `netns.setns`)
between fork and exec; the mount namespace is shared, so files are where they are outside.
The namespace must exist: nothing here creates one.
"""
from __future__ import annotations

import os
import subprocess
from typing import Sequence

from pyroute2 import netns


def _enter(ns: str):
    def preexec() -> None:
        netns.setns(ns, flags=0)          # flags=0: never create a missing namespace
    return preexec


def popen(ns: str, argv: Sequence[str], **kw) -> subprocess.Popen:
    """subprocess.Popen of argv inside namespace `ns`."""
    return subprocess.Popen(list(argv), preexec_fn=_enter(ns), **kw)


def run(ns: str, argv: Sequence[str], timeout: float, check: bool = False,
        **kw) -> subprocess.CompletedProcess:
    """subprocess.run of argv inside `ns`, output captured as text, killed after `timeout` s."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(list(argv), preexec_fn=_enter(ns), timeout=timeout, check=check, **kw)


def sysctl(ns: str, key: str, value: str | int) -> None:
    """Write a net sysctl ("net.ipv4.ip_forward") in `ns`: /proc/sys/net follows the
    namespace of the thread that opens it, so enter, write, and come back."""
    path = "/proc/sys/" + key.replace(".", "/")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        netns.setns(ns, flags=0)
        try:
            with open(path, "w") as f:
                f.write(f"{value}\n")
        finally:
            netns.setns(home)
    finally:
        os.close(home)
