"""Argo CD health checks (Lua) give the expected verdict on sample statuses.

The scripts run in Lua 5.1 (lupa's lua51 runtime), the dialect of gopher-lua that Argo CD
embeds, the way Argo CD runs them: the object as the global `obj`, the script's return value
the verdict. The cases are Argo CD's own health_test.yaml format, so the directory could be
contributed upstream as it is.
"""

from __future__ import annotations

import pathlib
from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml
from chart import chart_support as cs

HEALTH = cs.ROOT / "argocd" / "resource_customizations" / "mailfleet.io"
KINDS = ("SendingPool", "IPWarmup", "DomainAuth")


def _cases() -> list[tuple[str, pathlib.Path, dict[str, str]]]:
    cases = []
    for kind in KINDS:
        tests = yaml.safe_load((HEALTH / kind / "health_test.yaml").read_text())["tests"]
        for case in tests:
            cases.append((kind, HEALTH / kind / case["inputPath"], case["healthStatus"]))
    return cases


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def run_health(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute((HEALTH / kind / "health.lua").read_text())
    return {"status": result["status"], "message": result["message"]}


CASES = _cases()


@pytest.mark.parametrize(("kind", "path", "expected"), CASES,
                         ids=[f"{k}-{p.stem}" for k, p, _ in CASES])
def test_health_verdict(kind: str, path: pathlib.Path, expected: dict[str, str]) -> None:
    assert run_health(kind, yaml.safe_load(path.read_text())) == expected


def test_every_kind_has_healthy_progressing_and_degraded_cases() -> None:
    for kind in KINDS:
        verdicts = {e["status"] for k, _, e in CASES if k == kind}
        assert {"Healthy", "Progressing", "Degraded"} <= verdicts, kind


def test_every_kind_in_the_crds_has_a_health_check() -> None:
    kinds = {yaml.safe_load(p.read_text())["spec"]["names"]["kind"]
             for p in (cs.ROOT / "crds").glob("*.yaml")}
    assert kinds == {p.name for p in HEALTH.iterdir() if (p / "health.lua").exists()}


def test_health_checks_read_only_condition_types_the_operator_writes() -> None:
    """SendingPool's script reads the condition types of the SendingPool API."""
    from mailfleet_operator.api import domainauth, sendingpool

    pool_script = (HEALTH / "SendingPool" / "health.lua").read_text()
    for name in ("READY", "DEGRADED", "FAILING_OVER", "PROGRESSING"):
        assert f'"{getattr(sendingpool, name)}"' in pool_script
    da_script = (HEALTH / "DomainAuth" / "health.lua").read_text()
    assert f'"{domainauth.READY}"' in da_script and f'"{domainauth.DKIM_READY}"' in da_script
