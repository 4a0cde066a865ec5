"""The `natpair` command (console script): one verb per sub-command.

- ``natpair run --config unit.toml``: check the config (a bad one: message on
  stderr, exit 2), enter the configured namespace, run the unit until SIGTERM
  or SIGINT (exit 0; a failure to start: exit 1).
- ``natpair check --config unit.toml``: only check the config.
- ``natpair counters --socket PATH`` / ``natpair status --socket PATH``: ask a
  running unit over its control socket and print the answer.
- the operator's commands (dataplane/show.py answers, dataplane/view.py prints; ``--json``
  prints the answer as it is): ``natpair show failover [history]``, ``show conn [FILTER
  VALUE ...]``, ``show xlate``, ``show arp``, ``show counters``, ``clear conn [FILTER VALUE
  ...]``, ``failover active`` (on the standby), ``failover standby`` (on the active).
  Filters: address, port, protocol, state (dataplane/connfilter.py).
- the unit's socket: ``--socket PATH``, else ``--config FILE``'s ``[control] socket``, else
  the only socket in /run/natpair/.

Exit status: 0 done; 1 the unit answered with an error (a refused switchover, ...);
2 a bad config, filter or usage; 3 no daemon answers on the socket; 4 permission denied
on the socket.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from dataplane import config as config_mod

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
EXIT_USAGE, EXIT_NO_DAEMON, EXIT_PERMISSION = 2, 3, 4
DEFAULT_SOCKET_DIR = "/run/natpair"


def _run(args) -> int:
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        print(f"natpair: config refused: {e}", file=sys.stderr)
        return EXIT_CONFIG
    from dataplane import daemon
    daemon.setup_logging(cfg.unit.name, logging.DEBUG if args.verbose else logging.INFO)
    try:
        if cfg.unit.netns:
            from pyroute2 import netns
            netns.setns(cfg.unit.netns, flags=0)     # flags=0: never create it
        d = daemon.Daemon(cfg)
        d.catch_signals()
        d.start()
    except config_mod.ConfigError as e:                # refused by the core, before any change
        print(f"natpair: config refused: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as e:
        daemon.log_event(logging.ERROR, "error", where="start", error=e)
        return EXIT_FAIL
    return d.run()


def _check(args) -> int:
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        print(f"natpair: config refused: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{cfg.path}: ok (unit {cfg.unit.name}, creator_id {cfg.unit.creator_id}, feed {cfg.feed.kind})")
    return EXIT_OK


class _Refused(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _socket(args) -> str:
    if getattr(args, "socket", None):
        return args.socket
    if getattr(args, "config", None):
        try:
            return config_mod.load(args.config).control.socket
        except config_mod.ConfigError as e:
            raise _Refused(f"config refused: {e}", EXIT_CONFIG) from None
    import glob
    found = sorted(glob.glob(f"{DEFAULT_SOCKET_DIR}/*.sock"))
    if len(found) == 1:
        return found[0]
    raise _Refused(("no unit socket in " + DEFAULT_SOCKET_DIR if not found else
                    f"{len(found)} unit sockets in {DEFAULT_SOCKET_DIR} ({', '.join(found)})")
                   + ": say which with --socket PATH or --config FILE", EXIT_USAGE)


def _call(path: str, cmd: str, timeout: float = 10.0, **fields) -> dict:
    """One request; the errors an operator meets, as _Refused with their exit status."""
    from dataplane.daemon import request
    try:
        return request(path, cmd, timeout=timeout, **fields)
    except PermissionError:
        raise _Refused(f"{path}: permission denied on the control socket (it is root's, mode "
                       f"0600: run natpair as root)", EXIT_PERMISSION) from None
    except (FileNotFoundError, ConnectionRefusedError):
        raise _Refused(f"{path}: no natpair daemon answers there (is the unit running? "
                       f"start it with `natpair run --config FILE`)", EXIT_NO_DAEMON) from None
    except TimeoutError:
        raise _Refused(f"{path}: the daemon did not answer within {timeout:g} s", EXIT_FAIL) from None
    except (OSError, ValueError) as e:
        raise _Refused(f"{path}: {e}", EXIT_FAIL) from None


def _ask(args) -> int:
    try:
        reply = _call(args.socket, args.command)
    except _Refused as e:
        print(f"natpair: {e}", file=sys.stderr)
        return e.code
    if args.json or args.command == "status":
        print(json.dumps(reply, indent=None if args.json else 2, sort_keys=True))
    else:
        for group in ("core", "feed", "daemon", "replication"):
            for name, value in sorted(reply.get(group, {}).items()):
                print(f"{group}.{name} {value}")
    return EXIT_OK if reply.get("ok") else EXIT_FAIL


SHOW = {  # what -> (control cmd, view function name)
    "failover": ("show_failover", "failover"),
    "conn": ("show_conn", "conn"),
    "xlate": ("show_xlate", "xlate"),
    "arp": ("show_arp", "arp"),
    "counters": ("show_counters", "counters"),
}


def _operator(args) -> int:
    """show / clear / failover: one request, the answer printed (text or --json)."""
    from dataplane import connfilter, view
    try:
        fields: dict = {}
        if args.command == "show":
            words = list(args.words)
            if args.what == "failover" and words[:1] == ["history"]:
                cmd, fmt, words = "show_history", "history", words[1:]
            else:
                cmd, fmt = SHOW[args.what]
            if words and args.what != "conn":
                raise _Refused(f"show {args.what} takes no {' '.join(words)!r}", EXIT_USAGE)
            if args.what == "conn":
                fields = {"filters": connfilter.parse(words).as_dict(), "limit": args.limit}
        elif args.command == "clear":
            cmd, fmt = "clear_conn", None
            fields = {"filters": connfilter.parse(args.words).as_dict()}
        else:
            cmd, fmt = f"failover_{args.role}", None
            fields = {"reason": "operator: natpair failover " + args.role}
        reply = _call(_socket(args), cmd, **fields)
    except connfilter.FilterError as e:
        print(f"natpair: {e}", file=sys.stderr)
        return EXIT_USAGE
    except _Refused as e:
        print(f"natpair: {e}", file=sys.stderr)
        return e.code
    if not reply.get("ok"):
        print(f"natpair: {reply.get('name', 'unit')}: {reply.get('error', 'failed')}", file=sys.stderr)
        if args.json:
            print(json.dumps(reply, sort_keys=True))
        return EXIT_USAGE if reply.get("kind") == "filter" else EXIT_FAIL
    if args.json:
        print(json.dumps(reply, sort_keys=True))
    elif fmt is not None:
        print(getattr(view, fmt)(reply))
    elif cmd == "clear_conn":
        print(f"{reply['name']}: cleared {reply['cleared']} connection(s)")
    else:
        print(f"{reply['name']}: {reply['result']} (role now {reply['role']})")
    return EXIT_OK


def _target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", help="the unit's control socket")
    p.add_argument("--config", help="or the unit's config (its [control] socket)")
    p.add_argument("--json", action="store_true", help="the answer as JSON")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="natpair", description="natpair: a stateful NAT firewall unit")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one unit")
    r.add_argument("--config", required=True)
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(func=_run)
    c = sub.add_parser("check", help="check a config file")
    c.add_argument("--config", required=True)
    c.set_defaults(func=_check)
    for verb in ("counters", "status"):
        a = sub.add_parser(verb, help=f"print a running unit's {verb}")
        a.add_argument("--socket", required=True)
        a.add_argument("--json", action="store_true")
        a.set_defaults(func=_ask)
    sh = sub.add_parser("show", help="show failover [history] | conn [FILTER VALUE ...] | xlate | "
                                     "arp | counters")
    sh.add_argument("what", choices=sorted(SHOW))
    sh.add_argument("words", nargs="*", metavar="FILTER VALUE",
                    help="show failover history; show conn address A port P protocol tcp|udp|icmp "
                         "state S")
    sh.add_argument("--limit", type=int, default=1000, help="show conn: at most this many rows")
    _target(sh)
    sh.set_defaults(func=_operator)
    cl = sub.add_parser("clear", help="clear conn [FILTER VALUE ...] (on the active unit)")
    cl.add_argument("what", choices=["conn"])
    cl.add_argument("words", nargs="*", metavar="FILTER VALUE")
    _target(cl)
    cl.set_defaults(func=_operator)
    fo = sub.add_parser("failover", help="failover active (on the standby) | failover standby "
                                         "(on the active): a planned switchover")
    fo.add_argument("role", choices=["active", "standby"])
    _target(fo)
    fo.set_defaults(func=_operator)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
