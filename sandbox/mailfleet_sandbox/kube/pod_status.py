"""The PodStatus a kubelet posts for a pod in a phase (pure but for the clock): what tests
that play the kubelet write, on the emulator (`ApiServer.set_pod_status`) and on a real API
server (`ClusterApi.set_pod_status`) alike."""

from __future__ import annotations

import datetime
from typing import Any

JSON = dict[str, Any]


def _rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_status(pod: JSON, phase: str, ready: bool, pod_ip: str | None, host_ip: str | None,
               restart_count: int | None) -> JSON:
    """The status a kubelet would post for `pod` in `phase` (pure but for the clock)."""
    stamp = _rfc3339()
    old = pod.get("status") or {}
    old_conds = {c.get("type"): c for c in old.get("conditions") or []}

    def cond(typ: str, value: bool) -> JSON:
        status = "True" if value else "False"
        prev = old_conds.get(typ)
        when = (prev.get("lastTransitionTime") or stamp) if prev and prev.get(
            "status") == status else stamp
        return {"type": typ, "status": status, "lastProbeTime": None,
                "lastTransitionTime": when}

    running = phase == "Running"
    containers = []
    prev_cs = {c.get("name"): c for c in old.get("containerStatuses") or []}
    for c in (pod.get("spec") or {}).get("containers") or []:
        prev = prev_cs.get(c["name"], {})
        restarts = restart_count if restart_count is not None else prev.get("restartCount", 0)
        state: JSON
        if running:
            started = ((prev.get("state") or {}).get("running") or {}).get("startedAt")
            state = {"running": {"startedAt": started or stamp}}
        elif phase in ("Succeeded", "Failed"):
            state = {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1,
                                    "reason": "Completed" if phase == "Succeeded" else "Error",
                                    "finishedAt": stamp}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        containers.append({"name": c["name"], "image": c.get("image", ""), "imageID": "",
                           "ready": running and ready, "started": running,
                           "restartCount": restarts, "state": state})
    status = dict(old, phase=phase, conditions=[
        cond("PodScheduled", True), cond("Initialized", True),
        cond("ContainersReady", running and ready), cond("Ready", running and ready)],
        containerStatuses=containers)
    if running and "startTime" not in status:
        status["startTime"] = stamp
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if host_ip:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    return status
