"""`mailfleet sender run --config FILE` (and `python -m mailfleet_sender --config FILE`, which
the sandbox node agent uses): run one sender until SIGTERM.

Logs are JSON lines on stderr (one object per record, `extra` fields included) so that a log
pipeline can index them; no secret ever reaches a log record.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from mailfleet_sender import event_loops, service

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every command at INFO, with addresses: keep it to warnings.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sender_command", metavar="COMMAND", required=True)
    run_parser = sub.add_parser("run", help="run the sender service")
    add_run_arguments(run_parser)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="path of the SenderConfig YAML file")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    return event_loops.run(service.run(args.config))
