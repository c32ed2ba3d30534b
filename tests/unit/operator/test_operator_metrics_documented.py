"""docs/observability.md lists every metric the operator exports, with its labels, so what a
user finds in the table is what Prometheus scrapes."""

from __future__ import annotations

import re
from pathlib import Path

from mailfleet_operator import metrics

DOC = Path(__file__).resolve().parents[3] / "docs" / "observability.md"


def test_every_operator_metric_is_in_the_observability_table_with_its_labels() -> None:
    rows = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\| `(mailfleet_operator_[a-z_]+)` \| \w+ \|([^|]*)\|",
                                 DOC.read_text(), re.M)
    }
    exported = {}
    for family in metrics.REGISTRY.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        exported[name] = family
    assert set(rows) == set(exported)
    for name, collector in metrics.REGISTRY._names_to_collectors.items():
        if name in rows:
            for label in collector._labelnames:  # type: ignore[attr-defined]
                assert label in rows[name], f"{name}: label {label} undocumented"
