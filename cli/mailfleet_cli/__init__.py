"""The `mailfleet` command: one entry point, subcommands owned by the packages.

Each subcommand module is imported only when it is run, so the sender image (which installs
only the `sender` extra) can run `mailfleet sender run` without the operator's dependencies,
and import-linter's layer contracts between the packages stay intact.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

# name -> (module, one-line help). The module defines configure(parser) which adds its own
# arguments and sets `func` (a callable taking the parsed namespace, returning an exit code).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "crds": ("mailfleet_operator.crd_command", "print the CustomResourceDefinitions"),
    "docs": ("mailfleet_operator.docs_command", "print the API reference in Markdown"),
    "operator": ("mailfleet_operator.cli", "run the operator"),
    "sender": ("mailfleet_sender.cli", "run a sender"),
    "sandbox": ("mailfleet_sandbox.cli", "run the local sandbox world"),
    "warmup": ("mailfleet_operator.warmup_command", "plan IP warm-up schedules"),
}


class _CommandModule(Protocol):
    def configure(self, parser: argparse.ArgumentParser) -> None: ...


class _Runner(Protocol):
    def __call__(self, args: argparse.Namespace) -> int: ...


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailfleet", description="mailfleet command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        child = sub.add_parser(name, help=help_text)
        if name == wanted:
            try:
                module = cast(_CommandModule, importlib.import_module(module_name))
            except ModuleNotFoundError as exc:
                parser.exit(2, f"mailfleet {name}: not available in this install ({exc})\n")
            module.configure(child)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    func = cast(_Runner | None, getattr(args, "func", None))
    if func is None:
        parser.print_help()
        return 2
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
