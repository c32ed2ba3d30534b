"""The rendered chart applied with kubectl to the sandbox API emulator, and the chart's HA
mode run for real: two operator processes configured exactly as the rendered StatefulSet
configures its pods, meeting in the rendered peering object."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart import chart_support as cs
from mailfleet_sandbox.kube import ApiServer
from sandbox_fixtures.operator import wait_for

KUBECTL = str(Path(sys.executable).parent / "kubectl")


async def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        KUBECTL, "--kubeconfig", str(kubeconfig), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), 60)
    assert process.returncode == 0, f"kubectl {' '.join(args)}: {err.decode()}"
    return out.decode()


def documents(objs: list[dict[str, Any]]) -> str:
    return "---\n".join(yaml.safe_dump(o) for o in objs)


@pytest.mark.parametrize("server_side", [False, True], ids=["apply", "server-side-apply"])
async def test_plain_manifests_are_accepted_and_serve_the_samples(
    kube_api: ApiServer, kubeconfig: Path, server_side: bool
) -> None:
    extra = ["--server-side"] if server_side else []
    await kubectl(kubeconfig, "apply", *extra, "-f", str(cs.ROOT / "deploy" / "mailfleet.yaml"))
    await kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=20s",
                  "crd/sendingpools.mailfleet.io", "crd/ipwarmups.mailfleet.io",
                  "crd/domainauths.mailfleet.io")
    deployment = kube_api.get("apps/v1", "Deployment", "mailfleet-operator", "mailfleet-system")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("ghcr.io/mailfleet/operator:")
    assert kube_api.get("rbac.authorization.k8s.io/v1", "ClusterRoleBinding",
                        "mailfleet-operator")["subjects"][0]["namespace"] == "mailfleet-system"
    # The CRDs as installed accept the examples a user applies first.
    await kubectl(kubeconfig, "apply", "-n", "default", "-f", str(cs.ROOT / "samples"))
    out = await kubectl(kubeconfig, "get", "sendingpools,ipwarmups,domainauths", "-n",
                        "default", "-o", "name")
    assert len(out.split()) == 3
    # Applying the same manifests again changes nothing that breaks (upgrade path).
    await kubectl(kubeconfig, "apply", *extra, "-f", str(cs.ROOT / "deploy" / "mailfleet.yaml"))


async def test_every_value_set_is_accepted_by_the_api(kube_api: ApiServer, kubeconfig: Path
                                                      ) -> None:
    """What `helm install` sends: subchart CRDs first, then the templates (monitoring CRs
    left out: the emulator has no Prometheus Operator CRDs)."""
    for name, values in cs.VALUE_SETS.items():
        if name == "monitoring":
            values = {k: v for k, v in values.items() if k != "prometheusRule"}
        crds = cs.generate().subchart_crds(values)
        if crds:
            await kubectl(kubeconfig, "apply", "-f", "-", stdin=documents(crds))
            for crd in crds:
                await kubectl(kubeconfig, "wait", "--for=condition=Established",
                              "--timeout=20s", f"crd/{crd['metadata']['name']}")
        objs = [o for o in cs.objects(values) if o["apiVersion"] != "monitoring.coreos.com/v1"]
        namespaces = {o["metadata"].get("namespace") for o in objs} - {None}
        existing = {n["metadata"]["name"] for n in kube_api.list("v1", "Namespace")}
        for namespace in sorted((namespaces | {"mailfleet-system"}) - existing):
            kube_api.create({"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": namespace}})
        out = await kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts",
                            "-f", "-", stdin=documents(objs))
        assert out.count("serverside-applied") == len(objs), (name, out)


def _operator_env(pod_index: int, kubeconfig: Path) -> dict[str, str]:
    """The environment the rendered HA StatefulSet gives pod `pod_index`, downward API
    resolved the way the kubelet resolves it."""
    sts = cs.one(cs.objects(cs.VALUE_SETS["ha"]), "StatefulSet")
    env = dict(os.environ)
    for item in sts["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        path = item["valueFrom"]["fieldRef"]["fieldPath"]
        env[item["name"]] = {
            "metadata.name": f"{sts['metadata']['name']}-{pod_index}",
            "metadata.namespace": "mailfleet-system",
            "metadata.labels['apps.kubernetes.io/pod-index']": str(pod_index),
        }[path]
    env.update({
        "KUBECONFIG": str(kubeconfig),
        "MAILFLEET_OPERATOR_HTTP_PORT": "0",   # no fixed ports in tests
        "MAILFLEET_OPERATOR_HTTP_HOST": "127.0.0.1",
        # No DNS here: a closed loopback port answers at once instead of timing out.
        "MAILFLEET_OPERATOR_DNS_NAMESERVERS": "127.0.0.1:9",
        "MAILFLEET_OPERATOR_DNS_TIMEOUT": "0.2",
    })
    return env


class Replica:
    def __init__(self, index: int, process: asyncio.subprocess.Process) -> None:
        self.index = index
        self.process = process
        self.log: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.log.append(line.decode(errors="replace"))

    def said(self, text: str) -> bool:
        return any(text in line for line in self.log)

    def paused(self) -> bool:
        """kopf starts paused when peering is mandatory and logs only the flips after that."""
        flips = [line for line in self.log
                 if "Pausing operations" in line or "Resuming operations" in line]
        return not flips or "Pausing operations" in flips[-1]

    def handled(self, name: str) -> bool:
        """kopf logged a processed creation of `name` (JSON lines carry the object ref)."""
        for line in self.log:
            if "Creation is processed" in line and f"'name': '{name}'" in line:
                return True
        return False

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._reader


async def start_replica(index: int, kubeconfig: Path) -> Replica:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailfleet_cli", "operator", "run",
        env=_operator_env(index, kubeconfig),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    return Replica(index, process)


async def _create_domain(kube_api: ApiServer, name: str) -> None:
    if not [n for n in kube_api.list("v1", "Namespace") if n["metadata"]["name"] == "mail"]:
        kube_api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mail"}})
    kube_api.create({"apiVersion": "mailfleet.io/v1alpha1", "kind": "DomainAuth",
                     "metadata": {"name": name, "namespace": "mail"},
                     "spec": {"domain": f"{name}.example.com"}})


def _leader(kube_api: ApiServer) -> str:
    """The holder of the operator's leader Lease ('' when none)."""
    for lease in kube_api.list("coordination.k8s.io/v1", "Lease", "mailfleet-system"):
        if lease["metadata"]["name"] == "mailfleet-operator-leader":
            return str((lease.get("spec") or {}).get("holderIdentity") or "")
    return ""


def _peers(kube_api: ApiServer, name: str) -> dict[str, Any]:
    peering = kube_api.get("kopf.dev/v1", "ClusterKopfPeering", name)
    return dict(peering.get("status") or {})


@pytest.mark.slow
async def test_ha_replicas_elect_one_leader_and_hand_over_when_it_stops(
    kube_api: ApiServer, kubeconfig: Path
) -> None:
    values = cs.VALUE_SETS["ha"]
    await kubectl(kubeconfig, "apply", "-f", "-",
                  stdin=documents(cs.generate().subchart_crds(values)))
    await kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=20s",
                  "crd/clusterkopfpeerings.kopf.dev")
    for crd in cs.find(cs.objects(values), "CustomResourceDefinition"):
        kube_api.create(crd)
    peering = cs.one(cs.objects(values), "ClusterKopfPeering")
    await kubectl(kubeconfig, "apply", "-f", "-", stdin=documents([peering]))
    # The election's Lease lives in the release namespace (POD_NAMESPACE).
    kube_api.create({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": "mailfleet-system"}})

    # The StatefulSet starts pod 0 first. Alone, it wins the leader Lease and serves.
    replicas = [await start_replica(0, kubeconfig)]
    try:
        await wait_for(lambda: _leader(kube_api).startswith("mailfleet-operator-0_"),
                       within=60, message=f"replica 0 to lead: {replicas[0].log[-3:]}")
        await _create_domain(kube_api, "first")
        await wait_for(lambda: kube_api.get("mailfleet.io/v1alpha1", "DomainAuth", "first",
                                            "mail").get("status"), within=30,
                       message="mail/first to get a status")
        # Pod 1 joins and follows: the Lease stays with pod 0.
        replicas.append(await start_replica(1, kubeconfig))
        await wait_for(lambda: replicas[1].said("leader"), within=30,
                       message=f"replica 1 to take part in the election: {replicas[1].log[-3:]}")
        assert _leader(kube_api).startswith("mailfleet-operator-0_")
        # A graceful stop of the leader releases the Lease: pod 1 takes over at once (well
        # before a lease duration) and serves new objects.
        await replicas[0].stop()
        await wait_for(lambda: _leader(kube_api).startswith("mailfleet-operator-1_"),
                       within=30, message="replica 1 to lead")
        await _create_domain(kube_api, "second")
        await wait_for(lambda: kube_api.get("mailfleet.io/v1alpha1", "DomainAuth", "second",
                                            "mail").get("status"), within=30,
                       message=f"mail/second to get a status: {replicas[1].log[-3:]}")
    finally:
        for replica in replicas:
            await replica.stop()
