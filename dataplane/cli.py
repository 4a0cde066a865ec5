"""The `natpair` command (console script): one verb per sub-command.

- ``natpair run --config unit.toml``: check the config (a bad one: message on
  stderr, exit 2), enter the configured namespace, run the unit until SIGTERM
  or SIGINT (exit 0; a failure to start: exit 1).
- ``natpair check --config unit.toml``: only check the config.
- ``natpair counters --socket PATH`` / ``natpair status --socket PATH``: ask a
  running unit over its control socket and print the answer.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from dataplane import config as config_mod

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


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


def _ask(args) -> int:
    from dataplane.daemon import request
    try:
        reply = request(args.socket, args.command)
    except (OSError, ValueError) as e:
        print(f"natpair: {args.socket}: {e}", file=sys.stderr)
        return EXIT_FAIL
    if args.json or args.command == "status":
        print(json.dumps(reply, indent=None if args.json else 2, sort_keys=True))
    else:
        for group in ("core", "feed", "daemon", "replication"):
            for name, value in sorted(reply.get(group, {}).items()):
                print(f"{group}.{name} {value}")
    return EXIT_OK if reply.get("ok") else EXIT_FAIL


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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
