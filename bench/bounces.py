"""Bounce classification against the corpus of real replies (tests/data/bounces/corpus.jsonl).

Prints per-class precision and recall on the tuning part and on the held-out part; the last line
is one JSON object. `--misses` lists the tuning part's misreads (never the held-out part's, so that
nobody tunes rules against it).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Iterable

from mailfleet_sender import bounces

CORPUS = pathlib.Path(__file__).resolve().parent.parent / "tests/data/bounces/corpus.jsonl"
CLASSES = ("hard_bounce", "soft_bounce", "blocked", "throttled", "deferred")


def load(path: pathlib.Path = CORPUS) -> list[dict[str, object]]:
    """The corpus rows, in file order."""
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def predict(row: dict[str, object]) -> str:
    """The classifier's category for one row."""
    provider = row.get("provider")
    verdict = bounces.classify_reply(
        int(str(row["code"])), str(row["text"]),
        provider=str(provider) if provider not in (None, "mta") else None,
    )
    return verdict.category.value


def score(rows: Iterable[dict[str, object]]) -> dict[str, object]:
    """Accuracy, per-class precision/recall and counts for some rows."""
    pairs = [(str(row["expected"]), predict(row)) for row in rows]
    per_class: dict[str, dict[str, float | int]] = {}
    for klass in CLASSES:
        tp = sum(1 for want, got in pairs if want == klass and got == klass)
        predicted = sum(1 for _, got in pairs if got == klass)
        actual = sum(1 for want, _ in pairs if want == klass)
        per_class[klass] = {
            "precision": round(tp / predicted, 4) if predicted else 1.0,
            "recall": round(tp / actual, 4) if actual else 1.0,
            "n": actual,
        }
    right = sum(1 for want, got in pairs if want == got)
    return {
        "accuracy": round(right / len(pairs), 4) if pairs else 0.0,
        "n": len(pairs),
        "per_class": per_class,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--misses", action="store_true", help="list the tuning part's misreads")
    args = parser.parse_args(argv)
    rows = load()
    tuning = [row for row in rows if row["split"] == "tuning"]
    heldout = [row for row in rows if row["split"] == "heldout"]
    results = {"tuning": score(tuning), "heldout": score(heldout)}
    for name, result in results.items():
        print(f"{name}: accuracy {result['accuracy']:.2%} over {result['n']} replies")
        for klass, figures in result["per_class"].items():  # type: ignore[union-attr]
            print(f"  {klass:12} precision {figures['precision']:.2%}  recall "
                  f"{figures['recall']:.2%}  (n={figures['n']})")
    if args.misses:
        for row in tuning:
            got = predict(row)
            if got != row["expected"]:
                print(f"MISS {row['id']} want={row['expected']} got={got} [{row['provider']}] "
                      f"{row['code']} {str(row['text'])[:140]}", file=sys.stderr)
    held, tune = results["heldout"], results["tuning"]
    print(json.dumps({
        "heldout_accuracy": held["accuracy"],
        "tuning_accuracy": tune["accuracy"],
        "hard_precision": held["per_class"]["hard_bounce"]["precision"],  # type: ignore[index]
        "hard_precision_tuning": tune["per_class"]["hard_bounce"]["precision"],  # type: ignore[index]
        "n_heldout": held["n"],
        "n_tuning": tune["n"],
        "per_class": held["per_class"],
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
