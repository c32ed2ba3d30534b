"""`mailfleet crds`: print the CRDs, or write crds/<plural>.mailfleet.io.yaml (`make crds`)."""

from __future__ import annotations

import argparse
import pathlib
import sys

from mailfleet_operator.api import crds


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-dir",
        type=pathlib.Path,
        default=None,
        help="write one <plural>.mailfleet.io.yaml per kind here instead of printing",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="with --output-dir: write nothing, exit 1 if any file differs from the models",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output_dir: pathlib.Path | None = args.output_dir
    if output_dir is None:
        sys.stdout.write(crds.render_all())
        return 0
    stale = []
    for name, text in crds.render_files().items():
        path = output_dir / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            output_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        verb = "differs from the models" if args.check else "written"
        print(f"{path}: {verb}", file=sys.stderr)
    return 1 if args.check and stale else 0
