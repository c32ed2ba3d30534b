"""`python -m mailfleet_sender --config FILE`: the same as `mailfleet sender run`."""

from __future__ import annotations

import argparse
import sys

from mailfleet_sender import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailfleet_sender", description="run a sender")
    cli.add_run_arguments(parser)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
