"""Where the API server is and how to authenticate: in-cluster service account or kubeconfig.

Small on purpose: the operator needs the server URL, a CA, and a bearer token or client
certificate. Exec and auth-provider plugins are not supported (a pod uses its service
account; a developer's kubeconfig for a sandbox or kind has static credentials). The same
`Connection` feeds both our client and kopf's (see handlers' login), so they never disagree.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import pathlib
from typing import Any

import yaml

SERVICE_ACCOUNT = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ConfigError(RuntimeError):
    """No usable connection settings; the message says what was looked at."""


@dataclasses.dataclass(frozen=True)
class Connection:
    server: str
    ca_data: bytes | None = dataclasses.field(default=None, repr=False)
    insecure: bool = False
    token: str | None = dataclasses.field(default=None, repr=False)
    client_cert_data: bytes | None = dataclasses.field(default=None, repr=False)
    client_key_data: bytes | None = dataclasses.field(default=None, repr=False)
    default_namespace: str = "default"


def load_connection(kubeconfig: str | None = None) -> Connection:
    """In-cluster config when running in a pod, else the kubeconfig ($KUBECONFIG first)."""
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if not path and os.environ.get("KUBERNETES_SERVICE_HOST") and SERVICE_ACCOUNT.exists():
        return _in_cluster()
    config_path = pathlib.Path(path or pathlib.Path.home() / ".kube" / "config")
    if not config_path.exists():
        raise ConfigError(f"no kubeconfig at {config_path} and not running in a cluster")
    return _from_kubeconfig(config_path)


def _in_cluster() -> Connection:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:
        host = f"[{host}]"
    namespace_file = SERVICE_ACCOUNT / "namespace"
    return Connection(
        server=f"https://{host}:{port}",
        ca_data=(SERVICE_ACCOUNT / "ca.crt").read_bytes(),
        token=(SERVICE_ACCOUNT / "token").read_text().strip(),
        default_namespace=(
            namespace_file.read_text().strip() if namespace_file.exists() else "default"
        ),
    )


def _named(items: list[dict[str, Any]] | None, name: str, what: str) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            value = item.get(what, {})
            return value if isinstance(value, dict) else {}
    raise ConfigError(f"kubeconfig has no {what} named {name!r}")


def _data(entry: dict[str, Any], key: str, base: pathlib.Path) -> bytes | None:
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    if entry.get(key):
        return (base / str(entry[key])).read_bytes()
    return None


def _from_kubeconfig(path: pathlib.Path) -> Connection:
    config = yaml.safe_load(path.read_text()) or {}
    context_name = config.get("current-context")
    if not context_name:
        raise ConfigError(f"{path}: no current-context")
    context = _named(config.get("contexts"), context_name, "context")
    cluster = _named(config.get("clusters"), context.get("cluster", ""), "cluster")
    user = _named(config.get("users"), context.get("user", ""), "user") if context.get(
        "user"
    ) else {}
    if "exec" in user or "auth-provider" in user:
        raise ConfigError(f"{path}: exec and auth-provider credentials are not supported")
    base = path.parent
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = (base / str(user["tokenFile"])).read_text().strip()
    return Connection(
        server=str(cluster.get("server", "")).rstrip("/"),
        ca_data=_data(cluster, "certificate-authority", base),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        token=token,
        client_cert_data=_data(user, "client-certificate", base),
        client_key_data=_data(user, "client-key", base),
        default_namespace=str(context.get("namespace") or "default"),
    )
