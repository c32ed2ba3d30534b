"""`mailfleet docs`: print the Markdown API reference (`make docs` writes docs/api-reference.md)."""

from __future__ import annotations

import argparse
import sys

from mailfleet_operator.api import reference


def configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(reference.render_markdown())
    return 0
