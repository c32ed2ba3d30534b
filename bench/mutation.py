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
import ast
import hashlib
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
QUIET_TAG = "# mutation: quiet"  # lines so tagged in the staged copy are not mutated
# Parts of a module left unmutated, from the line given on: code that only runs inside sender
# processes started by the integration tests, where mutmut cannot see which test ran it
# (docs/mutation-testing.md says why and what covers it instead).
OUT_OF_SCOPE = {
    "mailfleet_sender/suppression.py": "# " + "-" * 75 + " HTTP API\n",
}


def modules() -> list[str]:
    """The mutated modules, as `[tool.mutmut] only_mutate` lists them (paths under src/)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return list(config["tool"]["mutmut"]["only_mutate"])


def scoped(name: str, text: str) -> str:
    """The module's source as mutmut gets it: everything from its `OUT_OF_SCOPE` marker on
    left unmutated, and the lines `quiet_lines` finds tagged with `QUIET_TAG`."""
    marker = OUT_OF_SCOPE.get(name)
    if marker is not None:
        head, found, tail = text.partition(marker)
        if not found:
            raise SystemExit(f"bench/mutation.py: {name} no longer has the line {marker!r}")
        text = f"{head}# pragma: no mutate block\n{found}{tail}"
    lines = text.split("\n")
    for number in quiet_lines(text):
        if not lines[number - 1].rstrip().endswith("\\"):
            lines[number - 1] += f"  {QUIET_TAG}"
    return "\n".join(lines)


def quiet_lines(text: str) -> set[int]:
    """Lines (1-based) whose mutants say nothing about the module's guarantees:

    - log statements: their wording and keys are no promise of these modules (that logs carry
      no secrets is tested where the values are logged);
    - SQL text on lines of its own inside `execute` calls, and calls whose only argument is
      SQL text: SQLite reads keywords and names in any case, so the case mutants are
      equivalent, and the `XX` ones are syntax errors every test of the query catches.
    """
    quiet: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute)
            and isinstance(node.value.func.value, ast.Name)
            and node.value.func.value.id in {"log", "logger"}
        ):
            quiet.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"execute", "executemany", "executescript"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            sql = node.args[0]
            end = sql.end_lineno or sql.lineno
            if len(node.args) == 1 and not node.keywords and sql.lineno == end:
                quiet.add(sql.lineno)
            else:
                source = text.split("\n")
                quiet.update(
                    n for n in range(sql.lineno, end + 1)
                    if source[n - 1].strip().startswith('"')
                    and source[n - 1].strip().rstrip(",").endswith('"')
                )
    return quiet


def stage(where: pathlib.Path, *, keep: bool) -> list[str]:
    """Lay out the staging directory as mutmut expects (see the module docstring).

    With `keep`, earlier verdicts are kept for modules whose staged source is unchanged;
    returns the modules (paths under src/) whose mutants must be made and run anew."""
    if where.exists() and not keep:
        shutil.rmtree(where)
    where.mkdir(exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name, parent in PACKAGES.items():
        target = where / "src" / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(parent / name, target, ignore=ignore)
    for name in modules():
        path = where / name
        path.write_text(scoped(name.removeprefix("src/"), path.read_text(encoding="utf-8")),
                        encoding="utf-8")
    if (where / "tests").exists():
        shutil.rmtree(where / "tests")
    shutil.copytree(ROOT / "tests", where / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", where / "pyproject.toml")
    hashes_file = where / "staged-hashes.json"
    before = json.loads(hashes_file.read_text()) if keep and hashes_file.exists() else {}
    hashes = {
        str(path.relative_to(where)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((where / "src").rglob("*.py"))
    }
    changed = []
    for source, digest in hashes.items():
        mutated = where / "mutants" / source
        if before.get(source) != digest:
            mutated.unlink(missing_ok=True)
            pathlib.Path(f"{mutated}.meta").unlink(missing_ok=True)
            changed.append(source)
    hashes_file.write_text(json.dumps(hashes, indent=1))
    return changed


def unsettled(where: pathlib.Path, names: list[str], changed: list[str]) -> list[str]:
    """Mutant names (or module globs) to run again after tests were added: every mutant not
    yet killed or timed out, and all of a module whose mutants are made anew. Adding tests
    cannot let a killed mutant survive, so the others keep their verdicts."""
    wanted = []
    for name in names:
        module = name.removeprefix("src/").removesuffix(".py").replace("/", ".")
        meta = where / "mutants" / f"{name}.meta"
        if name in changed or not meta.exists():
            wanted.append(f"{module}.*")
            continue
        verdicts = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        wanted += [key for key, code in verdicts.items() if code not in KILLED | TIMEOUT]
    return wanted


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
    parser.add_argument("--unsettled", action="store_true",
                        help="with --keep: run again only what was not killed (after adding tests)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("mutants", nargs="*", help="mutant name globs to run (default: all)")
    parser.add_argument("--stage", type=pathlib.Path, default=STAGE, help=argparse.SUPPRESS)
    args = parser.parse_args()
    where = args.stage.resolve()
    names = modules()
    changed = stage(where, keep=args.keep)
    selected = list(args.mutants)
    if args.keep and args.unsettled:
        selected = unsettled(where, names, changed)
        # New tests must be mapped to the functions they reach: collect the stats again.
        (where / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    mutmut = pathlib.Path(sys.executable).parent / "mutmut"
    started = time.monotonic()
    log = where / "mutmut.log"
    print(f"mutmut run over {len(names)} modules (progress in {log})", flush=True)
    with log.open("w", encoding="utf-8") as output:
        run = subprocess.run(
            [str(mutmut), "run", "--max-children", str(args.max_children), *selected],
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
