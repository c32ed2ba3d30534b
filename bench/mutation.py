"""Mutation testing of the safety-critical modules with mutmut (`make mutation`).

mutmut names a mutant by its file's path under the working directory (stripping only `src/`),
while the tests import `mailfleet_operator...` and `mailfleet_sender...`; this repository keeps
the two packages under `operator/` and `sender-image/`. So the run happens in a staging
directory (`.mutation/`, git-ignored) laid out as mutmut expects: `src/mailfleet_operator`,
`src/mailfleet_sender`, `tests/` and `pyproject.toml` (whose `[tool.mutmut]` table says which
modules are mutated and which tests run). The staging copy is made fresh on every run, so a
stale mutant can never be reported.

The last line printed is one JSON object: modules, mutants, killed, survived, timeout, score.
`score` is (killed + timeout) / mutants: a mutant that makes the tests hang is detected; one
that no test runs ("no tests") counts as survived.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
STAGE = ROOT / ".mutation"  # bench/mutation.py --stage DIR picks another (a second run beside)
PACKAGES = {"mailfleet_operator": ROOT / "operator", "mailfleet_sender": ROOT / "sender-image"}
# mutmut's exit codes per mutant (mutmut.stats.status_by_exit_code), grouped the way we report.
KILLED = {1, 3, 37}
TIMEOUT = {36, -24, 24, 152, 255}


def modules() -> list[str]:
    """The mutated modules, as `[tool.mutmut] only_mutate` lists them (paths under src/)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return list(config["tool"]["mutmut"]["only_mutate"])


def stage(where: pathlib.Path, *, keep: bool) -> None:
    """Lay out `.mutation/` as mutmut expects (see the module docstring)."""
    if where.exists() and not keep:
        shutil.rmtree(where)
    where.mkdir(exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name, parent in PACKAGES.items():
        target = where / "src" / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(parent / name, target, ignore=ignore)
    if (where / "tests").exists():
        shutil.rmtree(where / "tests")
    shutil.copytree(ROOT / "tests", where / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", where / "pyproject.toml")
    if keep and (where / "mutants").exists():
        # mutmut keeps a mutated copy only while the source is unchanged; refresh what changed.
        for source in (where / "src").rglob("*.py"):
            mutated = where / "mutants" / source.relative_to(where)
            if mutated.exists() and mutated.stat().st_mtime < source.stat().st_mtime:
                mutated.unlink()
                pathlib.Path(f"{mutated}.meta").unlink(missing_ok=True)


def tally(where: pathlib.Path, names: list[str]) -> dict[str, object]:
    """Count the verdicts in mutmut's per-module result files (`mutants/src/...py.meta`)."""
    counts = {"mutants": 0, "killed": 0, "survived": 0, "timeout": 0}
    for name in names:
        meta = where / "mutants" / f"{name}.meta"
        verdicts = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        for code in verdicts.values():
            counts["mutants"] += 1
            if code in KILLED:
                counts["killed"] += 1
            elif code in TIMEOUT:
                counts["timeout"] += 1
            else:
                counts["survived"] += 1
    detected = counts["killed"] + counts["timeout"]
    score = round(detected / counts["mutants"], 4) if counts["mutants"] else 0.0
    return {"modules": [name.removeprefix("src/") for name in names], **counts, "score": score}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true",
                        help="reuse earlier verdicts of unchanged modules (development only)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("mutants", nargs="*", help="mutant name globs to run (default: all)")
    parser.add_argument("--stage", type=pathlib.Path, default=STAGE, help=argparse.SUPPRESS)
    args = parser.parse_args()
    where = args.stage.resolve()
    names = modules()
    stage(where, keep=args.keep)
    mutmut = pathlib.Path(sys.executable).parent / "mutmut"
    started = time.monotonic()
    log = where / "mutmut.log"
    print(f"mutmut run over {len(names)} modules (progress in {log})", flush=True)
    with log.open("w", encoding="utf-8") as output:
        run = subprocess.run(
            [str(mutmut), "run", "--max-children", str(args.max_children), *args.mutants],
            cwd=where, check=False, stdout=output, stderr=subprocess.STDOUT,
        )
    took = time.monotonic() - started
    if run.returncode != 0:
        # mutmut draws a spinner with carriage returns; the last lines say what went wrong.
        lines = log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
        print("\n".join(lines.splitlines()[-40:]), file=sys.stderr)
        print(f"mutmut run failed (exit {run.returncode})", file=sys.stderr)
        return run.returncode
    survivors = subprocess.run([str(mutmut), "results"], cwd=where, check=False,
                               capture_output=True, text=True).stdout
    print(survivors.rstrip())
    print(f"mutmut run took {took:.0f} s")
    print(json.dumps(tally(where, names)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
