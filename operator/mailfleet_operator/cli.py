"""`mailfleet operator run`: the operator's entry point.

Flags override `MAILFLEET_OPERATOR_*` environment variables (see `settings.Settings`):

    mailfleet operator run [--namespace NS ... | --all-namespaces]
                           [--standalone | --peering NAME [--priority N]]
                           [--http-port N] [--dns-nameserver IP[:PORT] ...]
                           [--kubeconfig PATH] [--log-format json|text] [--time-scale X]

Logs are structured: one JSON object per line with the object's kind, namespace and name
as fields. Secrets never appear in them (the code that handles key material does not log).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
from typing import Any

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every `extra` field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(*, fmt: str, level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="operator_command", metavar="ACTION", required=True)
    run_parser = sub.add_parser("run", help="run the operator until interrupted")
    scope = run_parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", dest="namespaces",
                       help="namespace to serve (repeatable; default: the context's namespace)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", default=None,
                       help="serve every namespace (cluster-wide)")
    peering = run_parser.add_mutually_exclusive_group()
    peering.add_argument("--standalone", action="store_true", default=None,
                         help="no peering: a single replica (the default)")
    peering.add_argument("--peering", metavar="NAME",
                         help="kopf peering object: replicas elect the highest priority")
    run_parser.add_argument("--priority", type=int,
                            help="peering priority of this replica (distinct per replica)")
    run_parser.add_argument("--http-port", type=int,
                            help="port of /healthz, /readyz, /metrics (0: any, -1: off)")
    run_parser.add_argument("--dns-nameserver", action="append", dest="dns_nameservers",
                            metavar="IP[:PORT]", help="override verification nameservers")
    run_parser.add_argument("--kubeconfig", help="kubeconfig path (default: $KUBECONFIG)")
    run_parser.add_argument("--log-format", choices=("json", "text"))
    run_parser.add_argument("--log-level")
    run_parser.add_argument("--time-scale", type=float,
                            help="sandbox only: run operator time this many times faster")
    run_parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mailfleet_operator import running
    from mailfleet_operator import settings as settings_module

    overrides: dict[str, Any] = {
        "namespaces": tuple(args.namespaces) if args.namespaces else None,
        "all_namespaces": args.all_namespaces,
        "kubeconfig": args.kubeconfig,
        "http_port": args.http_port,
        "dns_nameservers": tuple(args.dns_nameservers) if args.dns_nameservers else None,
        "log_format": args.log_format,
        "log_level": args.log_level,
        "time_scale": args.time_scale,
        "priority": args.priority,
    }
    if args.peering:
        overrides.update(standalone=False, peering_name=args.peering)
    elif args.standalone:
        overrides["standalone"] = True
    settings = settings_module.Settings.from_env(**overrides)
    configure_logging(fmt=settings.log_format, level=settings.log_level)
    try:
        asyncio.run(running.run_operator(settings))
    except KeyboardInterrupt:
        return 130
    return 0
