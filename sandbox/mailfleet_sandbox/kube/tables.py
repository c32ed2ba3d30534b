"""Server-side printing: `meta.k8s.io/v1 Table` rows from printer columns (pure, no I/O).

Custom resources use their CRD's additionalPrinterColumns evaluated with the simple JSONPath
subset the API server supports; built-in kinds have the columns kubectl users know.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

JSON = dict[str, Any]


class JsonPathError(ValueError):
    pass


_SEGMENT = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_\-/]+)
      |\[(?P<index>-?\d+|\*)\]
      |\[\?\(@(?P<fpath>(?:\.[A-Za-z0-9_\-/]+)+)\s*(?P<op>==|!=)\s*(?P<fval>"[^"]*"|'[^']*'|[^)]+?)\)\]
      |\[['"](?P<qfield>[^'"]+)['"]\]
      |\.\*""",
    re.VERBOSE,
)


def compile_jsonpath(expr: str) -> list[tuple[str, Any]]:
    """Parse `.a.b[0].c[?(@.type=="Ready")].status`, optionally wrapped in `{...}`."""
    text = expr.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    if text.startswith("$"):
        text = text[1:]
    if not text.startswith((".", "[")):
        text = "." + text
    steps: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        m = _SEGMENT.match(text, pos)
        if not m:
            raise JsonPathError(f"unrecognized JSONPath at {pos}: {expr!r}")
        if m.group("field") is not None:
            steps.append(("field", m.group("field")))
        elif m.group("qfield") is not None:
            steps.append(("field", m.group("qfield")))
        elif m.group("index") is not None:
            idx = m.group("index")
            steps.append(("all", None) if idx == "*" else ("index", int(idx)))
        elif m.group("fpath") is not None:
            raw = m.group("fval").strip()
            value: Any = raw[1:-1] if raw[:1] in "\"'" else _literal(raw)
            steps.append(("filter", (m.group("fpath")[1:].split("."), m.group("op"), value)))
        else:
            steps.append(("all", None))
        pos = m.end()
    return steps


def _literal(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def evaluate_jsonpath(obj: Any, steps: list[tuple[str, Any]]) -> list[Any]:
    current = [obj]
    for kind, arg in steps:
        nxt: list[Any] = []
        for node in current:
            if kind == "field":
                if isinstance(node, dict) and arg in node:
                    nxt.append(node[arg])
            elif kind == "index":
                if isinstance(node, list) and -len(node) <= arg < len(node):
                    nxt.append(node[arg])
            elif kind == "all":
                if isinstance(node, list):
                    nxt.extend(node)
                elif isinstance(node, dict):
                    nxt.extend(node.values())
            elif kind == "filter" and isinstance(node, list):
                fpath, op, want = arg
                for item in node:
                    have: Any = item
                    for part in fpath:
                        have = have.get(part) if isinstance(have, dict) else None
                    if (have == want) == (op == "=="):
                        nxt.append(item)
        current = nxt
    return current


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < 0:
        return "<invalid>"
    if s < 60 * 2:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rem = s % 60
        return f"{minutes}m{rem}s" if rem else f"{minutes}m"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rem = (s % 3600) // 60
        return f"{hours}h{rem}m" if rem else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rem = hours % 24
        return f"{hours // 24}d{rem}h" if rem else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None


def age(timestamp: Any, now: datetime | None = None) -> str:
    when = parse_time(timestamp) if isinstance(timestamp, str) else None
    if when is None:
        return "<unknown>"
    now = now or datetime.now(UTC)
    return human_duration((now - when).total_seconds())


def _go_print(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def cell_for_column(obj: JSON, column: JSON) -> Any:
    """One cell of a CRD printer column, typed like the apiserver's table convertor."""
    try:
        results = evaluate_jsonpath(obj, compile_jsonpath(column.get("jsonPath", "")))
    except JsonPathError:
        return None
    if not results:
        return None
    value = results[0]
    typ = column.get("type", "string")
    if typ == "string":
        return _go_print(value)
    if typ == "integer":
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) \
            else None
    if typ == "number":
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if typ == "boolean":
        return value if isinstance(value, bool) else None
    if typ == "date":
        return age(value) if isinstance(value, str) else None
    return _go_print(value)


NAME_COLUMN: JSON = {"name": "Name", "type": "string", "format": "name", "priority": 0,
                     "description": "Name must be unique within a namespace. Is required when "
                     "creating resources, although some resources may allow a client to request "
                     "the generation of an appropriate name automatically."}
AGE_COLUMN: JSON = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
                    "description": "CreationTimestamp is a timestamp representing the server "
                    "time when this object was created."}


def column_definitions(columns: list[JSON]) -> list[JSON]:
    out = [dict(NAME_COLUMN)]
    for col in columns:
        out.append({"name": col["name"], "type": col.get("type", "string"),
                    "format": col.get("format", ""), "description": col.get("description", ""),
                    "priority": int(col.get("priority", 0))})
    return out


Printer = Callable[[JSON], list[Any]]


def row_cells(obj: JSON, columns: list[JSON], printer: Printer | None) -> list[Any]:
    name = (obj.get("metadata") or {}).get("name", "")
    if printer is not None:
        return [name, *printer(obj)]
    return [name, *(cell_for_column(obj, c) for c in columns)]


def partial_metadata(obj: JSON) -> JSON:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata", {})}


def build_table(items: list[JSON], columns: list[JSON], printer: Printer | None,
                include_object: str, resource_version: str, cont: str = "",
                remaining: int | None = None) -> JSON:
    rows = []
    for obj in items:
        row: JSON = {"cells": row_cells(obj, columns, printer)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = partial_metadata(obj)
        rows.append(row)
    meta: JSON = {"resourceVersion": resource_version}
    if cont:
        meta["continue"] = cont
    if remaining is not None:
        meta["remainingItemCount"] = remaining
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
            "columnDefinitions": column_definitions(columns), "rows": rows}


# ------------------------------------------------------------------ built-in printers


def _pod_cells(pod: JSON) -> list[Any]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    total = len(spec.get("containers") or [])
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    reason = status.get("reason") or status.get("phase") or "Pending"
    for c in statuses:
        waiting = (c.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            reason = waiting["reason"]
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Terminating"
    return [f"{ready}/{total}", reason, restarts, age(pod["metadata"].get("creationTimestamp")),
            status.get("podIP") or "<none>", spec.get("nodeName") or "<none>", "<none>",
            "<none>"]


def _ready_of(obj: JSON) -> str:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}"


def _age(obj: JSON) -> str:
    return age((obj.get("metadata") or {}).get("creationTimestamp"))


def _data_count(obj: JSON) -> int:
    return len(obj.get("data") or {}) + len(obj.get("binaryData") or {})


def _service_cells(svc: JSON) -> list[Any]:
    spec = svc.get("spec") or {}
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or [])
    return [spec.get("type", "ClusterIP"), spec.get("clusterIP") or "<none>", "<none>",
            ports or "<none>", _age(svc)]


def _node_cells(node: JSON) -> list[Any]:
    conds = (node.get("status") or {}).get("conditions") or []
    ready = next((c for c in conds if c.get("type") == "Ready"), None)
    state = "Ready" if ready and ready.get("status") == "True" else "NotReady"
    if (node.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    return [state, "<none>", _age(node), "v1.30.0"]


def _event_object(event: JSON) -> str:
    ref = event.get("involvedObject") or event.get("regarding") or {}
    return f"{ref.get('kind', '')}/{ref.get('name', '')}".lower()


def _col(name: str, typ: str = "string", priority: int = 0) -> JSON:
    return {"name": name, "type": typ, "priority": priority}


BUILTIN_PRINTERS: dict[str, tuple[list[JSON], Printer]] = {
    "pods": ([_col("Ready"), _col("Status"), _col("Restarts", "integer"), _col("Age"),
              _col("IP", priority=1), _col("Node", priority=1),
              _col("Nominated Node", priority=1), _col("Readiness Gates", priority=1)],
             _pod_cells),
    "deployments": ([_col("Ready"), _col("Up-to-date", "integer"), _col("Available", "integer"),
                     _col("Age")],
                    lambda d: [_ready_of(d), (d.get("status") or {}).get("updatedReplicas", 0),
                               (d.get("status") or {}).get("availableReplicas", 0), _age(d)]),
    "statefulsets": ([_col("Ready"), _col("Age")], lambda s: [_ready_of(s), _age(s)]),
    "replicasets": ([_col("Desired", "integer"), _col("Current", "integer"),
                     _col("Ready", "integer"), _col("Age")],
                    lambda r: [(r.get("spec") or {}).get("replicas", 1),
                               (r.get("status") or {}).get("replicas", 0),
                               (r.get("status") or {}).get("readyReplicas", 0), _age(r)]),
    "configmaps": ([_col("Data", "integer"), _col("Age")], lambda c: [_data_count(c), _age(c)]),
    "secrets": ([_col("Type"), _col("Data", "integer"), _col("Age")],
                lambda s: [s.get("type", "Opaque"), _data_count(s), _age(s)]),
    "namespaces": ([_col("Status"), _col("Age")],
                   lambda n: [(n.get("status") or {}).get("phase", "Active"), _age(n)]),
    "services": ([_col("Type"), _col("Cluster-IP"), _col("External-IP"), _col("Port(s)"),
                  _col("Age")], _service_cells),
    "nodes": ([_col("Status"), _col("Roles"), _col("Age"), _col("Version")], _node_cells),
    "persistentvolumeclaims": (
        [_col("Status"), _col("Volume"), _col("Capacity"), _col("Access Modes"),
         _col("StorageClass"), _col("Age")],
        lambda p: [(p.get("status") or {}).get("phase", "Pending"), "", "",
                   "", (p.get("spec") or {}).get("storageClassName") or "<unset>", _age(p)]),
    "events": ([_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message")],
               lambda e: [age(e.get("lastTimestamp") or e.get("eventTime")
                              or e["metadata"].get("creationTimestamp")),
                          e.get("type", ""), e.get("reason", ""),
                          _event_object(e), e.get("message") or e.get("note") or ""]),
}
