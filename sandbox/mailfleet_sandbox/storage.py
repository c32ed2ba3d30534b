"""Dynamic volume provisioning for the sandbox's real control plane: a default StorageClass
and a provisioner for it, like kind's local-path-provisioner.

A StatefulSet's claims (the senders' spools) stay Pending on a cluster without a provisioner,
and the scheduler will not place their pods. `LocalProvisioner` watches claims of the
`sandbox-local` class that the PV controller marked for it, creates a hostPath
PersistentVolume pre-bound to each (the PV controller completes the binding), and deletes a
volume once its claim is gone (reclaim policy Delete). The data lives where the node agent keeps
claims, `<agent workdir>/pvcs/<namespace>/<claim>`, so every node of the one machine sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from mailfleet_sandbox import api_watch

JSON = dict[str, Any]
log = logging.getLogger(__name__)

STORAGE_CLASS = "sandbox-local"
PROVISIONER = "mailfleet.io/sandbox-local"
PROVISIONER_ANNOTATIONS = ("volume.kubernetes.io/storage-provisioner",
                           "volume.beta.kubernetes.io/storage-provisioner")


def storage_class() -> JSON:
    """The default StorageClass (Immediate binding: the volume is on every node)."""
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {
                "storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER, "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate"}


def volume_for(claim: JSON, claims_dir: Path) -> JSON | None:
    """The PersistentVolume that satisfies `claim`, or None when it is not ours to provision
    (pure)."""
    meta, spec = claim.get("metadata") or {}, claim.get("spec") or {}
    annotations = meta.get("annotations") or {}
    if (claim.get("status") or {}).get("phase") not in (None, "Pending") or spec.get(
            "volumeName") or meta.get("deletionTimestamp"):
        return None
    if spec.get("storageClassName") != STORAGE_CLASS or not any(
            annotations.get(key) == PROVISIONER for key in PROVISIONER_ANNOTATIONS):
        return None
    ns, name = meta.get("namespace", ""), meta["name"]
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"pvc-{meta['uid']}",
                         "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {"capacity": {"storage": size},
                     "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete",
                     "storageClassName": STORAGE_CLASS,
                     "volumeMode": spec.get("volumeMode") or "Filesystem",
                     "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                  "namespace": ns, "name": name, "uid": meta["uid"]},
                     "hostPath": {"path": str(claims_dir / ns / name),
                                  "type": "DirectoryOrCreate"}}}


class LocalProvisioner:
    """Provisions `sandbox-local` claims; `async with LocalProvisioner(url, dir, ssl):`."""

    def __init__(self, api_url: str, claims_dir: Path, ssl_context: ssl.SSLContext | None) -> None:
        self.claims_dir = claims_dir
        self._client = api_watch.ApiClient(api_url, ssl_context)
        self._wake = asyncio.Event()
        self._claims = api_watch.Informer(self._client, "/api/v1/persistentvolumeclaims",
                                           self._wake.set)
        self._volumes = api_watch.Informer(self._client, "/api/v1/persistentvolumes",
                                            self._wake.set)
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> LocalProvisioner:
        code, body = await self._client.request("POST", "/apis/storage.k8s.io/v1/storageclasses",
                                                storage_class(), ok=(200, 201, 409))
        if code not in (200, 201, 409):
            raise RuntimeError(f"cannot create the StorageClass: {body.get('message')}")
        for informer in (self._claims, self._volumes):
            self._tasks.append(asyncio.create_task(informer.run()))
        self._tasks.append(asyncio.create_task(self._loop()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._client.close()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 5.0)
            self._wake.clear()
            try:
                await self._reconcile()
            except (aiohttp.ClientError, OSError) as exc:
                log.warning("provisioner: %s", exc)

    async def _reconcile(self) -> None:
        existing = {v["metadata"]["name"] for v in self._volumes.items.values()}
        for claim in list(self._claims.items.values()):
            volume = volume_for(claim, self.claims_dir)
            if volume is None or volume["metadata"]["name"] in existing:
                continue
            await asyncio.to_thread(Path(volume["spec"]["hostPath"]["path"]).mkdir,
                                    parents=True, exist_ok=True)
            code, body = await self._client.request("POST", "/api/v1/persistentvolumes", volume,
                                                    ok=(200, 201, 409))
            if code not in (200, 201, 409):
                log.warning("provisioner: cannot create %s: %s", volume["metadata"]["name"],
                            body.get("message"))
        for volume in list(self._volumes.items.values()):
            meta = volume.get("metadata") or {}
            released = (volume.get("status") or {}).get("phase") == "Released"
            ours = (meta.get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") == \
                PROVISIONER
            if released and ours and not meta.get("deletionTimestamp"):
                await self._client.request("DELETE", f"/api/v1/persistentvolumes/{meta['name']}",
                                           ok=(200, 202, 404))
