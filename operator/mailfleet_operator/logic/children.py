"""Desired objects a SendingPool owns: StatefulSet, Services, ConfigMap, PDB (pure, no I/O).

Plain dicts, as the API takes them, with deterministic names and labels so every reconcile
builds the same bytes for the same inputs (no spurious updates, a diff means a change).

Why some choices:
- The config ConfigMap is mounted as a directory, never with `subPath`: the kubelet then
  swaps the `..data` symlink on a change and the sender reloads the file, so a config change
  rolls out without restarting pods. The pod template therefore carries no config hash.
- `podManagementPolicy: Parallel`: senders do not need ordered start-up, and a failover
  should not wait for a lower ordinal to become ready.
- Pod security is the "restricted" profile, plus NET_BIND_SERVICE for port 25/587.
- Standby pods are in the same StatefulSet (replicas = active + standby): any pod can take
  any role, so the operator moves roles instead of restarting pods.
- DKIM keys come from ONE pool-owned Secret (`<pool>-dkim`) mounted once at `DKIM_DIR`: a key
  rotation rewrites that Secret's files in place (the kubelet swaps them, the sender reloads),
  never the pod template. A template change would roll the pods one by one, and a rollout
  stalls on any unready pod while the config already names the new key.
- The client Service selects only pods labelled `mailfleet.io/serving=true` (the operator
  sets it on pods holding an IP), as CloudNativePG's `-rw` Service selects the primary:
  submissions never land on a standby where mail would wait for an IP.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mailfleet_operator.api import sendingpool as sp

DEFAULT_IMAGE = "ghcr.io/mailfleet/sender:0.1.0"
SENDER_COMMAND = ("python", "-m", "mailfleet_sender")
CONFIG_DIR = "/etc/mailfleet/config"
CONFIG_FILE = "sender.yaml"
ADMIN_DIR = "/etc/mailfleet/admin"
ADMIN_TOKEN_KEY = "token"
SECRETS_DIR = "/etc/mailfleet/secrets"
DKIM_DIR = "/etc/mailfleet/dkim"
SPOOL_DIR = "/var/spool/mailfleet"
RUN_AS = 10001

POOL_LABEL = "mailfleet.io/pool"
ROLE_LABEL = "app.kubernetes.io/component"
SERVING_LABEL = "mailfleet.io/serving"
"""On pods that take submissions (hold an IP; any staying pod in relay mode): set by the
operator on the pods, selected by the client Service."""


@dataclass(frozen=True)
class SecretMount:
    """One Secret mounted read-only at `/etc/mailfleet/secrets/<volume>`."""

    volume: str
    secret_name: str
    items: tuple[str, ...] = ()  # keys to project; all keys when empty

    @property
    def path(self) -> str:
        return f"{SECRETS_DIR}/{self.volume}"


@dataclass(frozen=True)
class SecretFile:
    """One key of a Secret, as the file `path` of a `FilesMount`."""

    secret_name: str
    key: str
    path: str


@dataclass(frozen=True)
class FilesMount:
    """Keys of one or more Secrets in one read-only directory (a projected volume), each
    Secret keeping one purpose: a webhook's signing key beside its CA, the tracking key beside
    the tracking host's certificate. `optional` Secrets may be missing: the pod still starts,
    and the kubelet adds the files once the Secret exists, so a Secret created late never
    changes the pod template (nor rolls the pods)."""

    volume: str
    path: str
    files: tuple[SecretFile, ...]
    optional: tuple[str, ...] = ()  # names of the Secrets that may be missing


@dataclass(frozen=True)
class Names:
    """Deterministic names of a pool's children."""

    pool: str

    @property
    def statefulset(self) -> str:
        return self.pool

    @property
    def headless_service(self) -> str:
        return f"{self.pool}-pods"

    @property
    def client_service(self) -> str:
        return self.pool

    @property
    def config_map(self) -> str:
        return f"{self.pool}-config"

    @property
    def pdb(self) -> str:
        return self.pool

    @property
    def admin_secret(self) -> str:
        return f"{self.pool}-admin"

    @property
    def dkim_secret(self) -> str:
        return f"{self.pool}-dkim"

    @property
    def links_secret(self) -> str:
        """Link keys (unsubscribe tokens, traces, VERP): `logic.pool_secrets`."""
        return f"{self.pool}-links"

    @property
    def peers_secret(self) -> str:
        """The token the pool's pods use with each other: `logic.pool_secrets`."""
        return f"{self.pool}-peers"

    @property
    def tracking_secret(self) -> str:
        """The HMAC key of tracking tokens (open pixels, click links): `logic.pool_secrets`."""
        return f"{self.pool}-tracking-key"

    @property
    def submission_secret(self) -> str:
        return f"{self.pool}-submission"

    @property
    def network_policy(self) -> str:
        return self.pool

    @property
    def public_service(self) -> str:
        return f"{self.pool}-public"

    def pod(self, ordinal: int) -> str:
        return f"{self.pool}-{ordinal}"

    def pod_fqdn(self, ordinal: int, namespace: str) -> str:
        return f"{self.pod(ordinal)}.{self.headless_service}.{namespace}.svc"


def selector_labels(pool: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "mailfleet-sender", POOL_LABEL: pool}


def labels(pool: str) -> dict[str, str]:
    return {
        # No app.kubernetes.io/instance: Argo CD's label tracking reads it, and an
        # Application that happened to share the pool's name would claim the children.
        **selector_labels(pool),
        "app.kubernetes.io/managed-by": "mailfleet",
        ROLE_LABEL: "sender",
    }


def serving_selector(pool: str) -> dict[str, str]:
    """The client Service's selector: the pool's pods that take submissions."""
    return {**selector_labels(pool), SERVING_LABEL: "true"}


def dkim_key_name(secret_name: str) -> str:
    """The file (data key) of a DomainAuth key Secret's private key in the pool's DKIM
    Secret: unique per key Secret, and a valid Secret data key (Secret names are DNS
    subdomains)."""
    return f"{secret_name}.pem"


def dkim_key_path(secret_name: str) -> str:
    return f"{DKIM_DIR}/{dkim_key_name(secret_name)}"


def selector_string(pool: str) -> str:
    """The label selector in text form, for `status.selector` (scale subresource, HPAs)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(pool).items()))


def owner_reference(*, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": "SendingPool",
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def meta(name: str, namespace: str, pool: str, owner: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata of an owned child (also for `pool_secrets`)."""
    return _meta(name, namespace, pool, owner)


def _meta(name: str, namespace: str, pool: str, owner: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels(pool),
        "ownerReferences": [dict(owner)],
    }


def child_meta(name: str, pool: PoolObjects) -> dict[str, Any]:
    """Metadata of one child: its name, the pool's labels and owner reference."""
    return _meta(name, pool.namespace, pool.name, pool.owner)


@dataclass(frozen=True)
class PoolObjects:
    """Everything the builders need besides the spec."""

    name: str
    namespace: str
    uid: str
    replicas: int  # active + standby pods, after autoscaling
    secret_mounts: Sequence[SecretMount] = field(default_factory=tuple)
    files_mounts: Sequence[FilesMount] = field(default_factory=tuple)
    default_image: str = DEFAULT_IMAGE

    @property
    def owner(self) -> dict[str, Any]:
        return owner_reference(name=self.name, uid=self.uid)


def build_statefulset(spec: sp.SendingPoolSpec, pool: PoolObjects) -> dict[str, Any]:
    names = Names(pool.name)
    probe = {"port": "admin", "scheme": "HTTP"}  # probes never touch the submission port
    container: dict[str, Any] = {
        "name": "sender",
        "image": spec.image or pool.default_image,
        "imagePullPolicy": "IfNotPresent",
        # The sender's own entry point (`python -m mailfleet_sender`, what the image runs and
        # what the sandbox node agent maps sender images to), so the pod does not depend on
        # the image's ENTRYPOINT being the `mailfleet` dispatcher.
        "command": list(SENDER_COMMAND),
        "args": ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        "ports": container_ports(spec),
        "readinessProbe": {
            "httpGet": {"path": "/readyz", **probe},
            "periodSeconds": 2,
            "failureThreshold": 2,
            "timeoutSeconds": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", **probe},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 3,
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz", **probe},
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "admin", "mountPath": ADMIN_DIR, "readOnly": True},
            {"name": "spool", "mountPath": SPOOL_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dkim", "mountPath": DKIM_DIR, "readOnly": True},
            *(
                {"name": m.volume, "mountPath": m.path, "readOnly": True}
                for m in pool.secret_mounts
            ),
            *(
                {"name": f.volume, "mountPath": f.path, "readOnly": True}
                for f in pool.files_mounts
            ),
        ],
        # SIGTERM drains: give queued deliveries in flight time to finish or hand off.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.resources is not None:
        container["resources"] = spec.resources.model_dump(by_alias=True, exclude_none=True)
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": names.config_map}},
        {
            "name": "admin",
            "secret": {"secretName": names.admin_secret, "defaultMode": 0o440},
        },
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        {"name": "dkim", "secret": {"secretName": names.dkim_secret, "defaultMode": 0o440}},
    ]
    for mount in pool.secret_mounts:
        secret: dict[str, Any] = {"secretName": mount.secret_name, "defaultMode": 0o440}
        if mount.items:
            secret["items"] = [{"key": key, "path": key} for key in mount.items]
        volumes.append({"name": mount.volume, "secret": secret})
    volumes.extend(_files_volume(m) for m in pool.files_mounts)
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 120,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations
        ]
    storage: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(spec.storage.size)}},
    }
    if spec.storage.storage_class_name:
        storage["storageClassName"] = spec.storage.storage_class_name
    template_meta: dict[str, Any] = {"labels": labels(pool.name)}
    if spec.pod_annotations:
        template_meta["annotations"] = dict(spec.pod_annotations)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(names.statefulset, pool.namespace, pool.name, pool.owner),
        "spec": {
            "replicas": pool.replicas,
            "serviceName": names.headless_service,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            # Spool volumes hold mail already answered with 250: they outlive scale-downs (a
            # pod removed before its queue emptied comes back to the same mail) and the
            # StatefulSet itself (deleted by hand, or by a cascade before the pool drained).
            # A deleted pool removes them itself once every queue is confirmed empty
            # (`reconcile.pool_deletion`).
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            },
            "selector": {"matchLabels": selector_labels(pool.name)},
            "template": {"metadata": template_meta, "spec": pod_spec},
            "volumeClaimTemplates": [
                {"metadata": {"name": "spool", "labels": labels(pool.name)}, "spec": storage}
            ],
        },
    }


def _files_volume(mount: FilesMount) -> dict[str, Any]:
    """A projected volume: one source per Secret, in the order its files are listed."""
    sources: list[dict[str, Any]] = []
    for file in mount.files:
        item = {"key": file.key, "path": file.path}
        if sources and sources[-1]["secret"]["name"] == file.secret_name:
            sources[-1]["secret"]["items"].append(item)
            continue
        secret: dict[str, Any] = {"name": file.secret_name, "items": [item]}
        if file.secret_name in mount.optional:
            secret["optional"] = True
        sources.append({"secret": secret})
    return {"name": mount.volume, "projected": {"sources": sources, "defaultMode": 0o440}}


def container_ports(spec: sp.SendingPoolSpec) -> list[dict[str, Any]]:
    """One named port per listener (docs/security.md): submission (smtp, http), admin, and
    the public ones (unsubscribe pages, feedback reports when the loop is on)."""
    sub = spec.submission
    ports = [
        {"name": "smtp", "containerPort": sub.smtp.port, "protocol": "TCP"},
        {"name": "http", "containerPort": sub.http.port, "protocol": "TCP"},
        {"name": "admin", "containerPort": sub.admin_port, "protocol": "TCP"},
        {"name": "public", "containerPort": sub.public_port, "protocol": "TCP"},
    ]
    if spec.feedback_loop.enabled:
        ports.append({"name": "feedback", "containerPort": sp.FEEDBACK_PORT, "protocol": "TCP"})
    return ports


def build_headless_service(spec: sp.SendingPoolSpec, pool: PoolObjects) -> dict[str, Any]:
    """Stable per-pod DNS names for the pool's pods among themselves (admin port: hand-off,
    replication); lists unready pods too so the operator can reach them."""
    names = Names(pool.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(names.headless_service, pool.namespace, pool.name, pool.owner),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(pool.name),
            "ports": [
                {"name": "admin", "port": spec.submission.admin_port, "targetPort": "admin"},
            ],
        },
    }


def build_client_service(spec: sp.SendingPoolSpec, pool: PoolObjects) -> dict[str, Any]:
    """What applications submit to: SMTP submission and the HTTP API, on the ready pods that
    hold an IP (`SERVING_LABEL`), never on a standby where mail would wait for an IP."""
    names = Names(pool.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(names.client_service, pool.namespace, pool.name, pool.owner),
        "spec": {
            "type": "ClusterIP",
            "selector": serving_selector(pool.name),
            "ports": [
                {
                    "name": "smtp",
                    "port": spec.submission.smtp.port,
                    "targetPort": "smtp",
                    "protocol": "TCP",
                },
                {
                    "name": "http",
                    "port": spec.submission.http.port,
                    "targetPort": "http",
                    "protocol": "TCP",
                },
            ],
        },
    }


def build_public_service(spec: sp.SendingPoolSpec, pool: PoolObjects) -> dict[str, Any]:
    """What an ingress (unsubscribe pages) or an inbound MX relay (feedback reports) points
    at: only the public ports, on every ready pod (any pod can serve them)."""
    names = Names(pool.name)
    ports = [{"name": "public", "port": spec.submission.public_port, "targetPort": "public",
              "protocol": "TCP"}]
    if spec.feedback_loop.enabled:
        ports.append({"name": "feedback", "port": sp.FEEDBACK_PORT, "targetPort": "feedback",
                      "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(names.public_service, pool.namespace, pool.name, pool.owner),
        "spec": {"type": "ClusterIP", "selector": selector_labels(pool.name), "ports": ports},
    }


def build_pdb(spec: sp.SendingPoolSpec, pool: PoolObjects) -> dict[str, Any]:
    """At most one pod voluntarily evicted at a time: each holds IPs and a spool."""
    names = Names(pool.name)
    del spec
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(names.pdb, pool.namespace, pool.name, pool.owner),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(pool.name)},
        },
    }


def build_config_map(
    pool: PoolObjects, *, config_yaml: str, annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    meta = _meta(Names(pool.name).config_map, pool.namespace, pool.name, pool.owner)
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {CONFIG_FILE: config_yaml},
    }


def build_admin_secret(pool: PoolObjects, *, token: str) -> dict[str, Any]:
    """The bearer token of the pods' admin endpoints (assignment, drain, stats)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(Names(pool.name).admin_secret, pool.namespace, pool.name, pool.owner),
        "stringData": {ADMIN_TOKEN_KEY: token},
    }


def admin_token(secret: Mapping[str, Any] | None) -> str:
    """The token in the admin Secret: base64 `data` as the API returns it, else the
    `stringData` that `build_admin_secret` writes; "" when there is none. Shared by the pool
    and warm-up controllers, which both talk to the pods' admin endpoints."""
    if secret is None:
        return ""
    data = secret.get("data") or {}
    if ADMIN_TOKEN_KEY in data:
        return base64.b64decode(data[ADMIN_TOKEN_KEY]).decode()
    return str((secret.get("stringData") or {}).get(ADMIN_TOKEN_KEY, ""))


def build_dkim_secret(pool: PoolObjects, *, data: Mapping[str, str]) -> dict[str, Any]:
    """The pool's DKIM Secret: `data` maps `dkim_key_name(<key Secret>)` to the key Secret's
    `private.pem`, still base64 as the API gives it (copied, never decoded here)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(Names(pool.name).dkim_secret, pool.namespace, pool.name, pool.owner),
        "data": dict(sorted(data.items())),
    }


def build_children(
    spec: sp.SendingPoolSpec, pool: PoolObjects, *, config_yaml: str
) -> list[dict[str, Any]]:
    """Every child but the admin Secret (created once, never rebuilt: its token is random)."""
    return [
        build_config_map(pool, config_yaml=config_yaml),
        build_headless_service(spec, pool),
        build_client_service(spec, pool),
        build_public_service(spec, pool),
        build_pdb(spec, pool),
        build_statefulset(spec, pool),
    ]
