"""Where the API server is and how to authenticate: in-cluster service account or kubeconfig.

Small on purpose: the operator needs the server URL, a CA, and a bearer token or client
certificate. Exec and auth-provider plugins are not supported (a pod uses its service
account; a developer's kubeconfig for a sandbox or kind has static credentials). The same
`Connection` feeds both our client and kopf's (see handlers' login), so they never disagree.

Tokens from a file are read again when the file changes: a pod's service-account token is a
bound token that the kubelet replaces before it expires (about every hour), so a token read
once at start stops working while the operator runs. `TokenFile` re-stats the file at each
request (a stat, no read unless it changed); the client also re-reads once on a 401.
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
    token_file: str | None = None
    """Where `token` was read from; read again when it changes (see the module docstring)."""


Stamp = tuple[int, int, int]


class TokenFile:
    """The current bearer token of a `Connection`: its `token_file` re-read when the file's
    inode, mtime or size changed (the kubelet swaps a `..data` symlink, so a new token is a
    new inode), else the static `token`. An unreadable file keeps the last token read: the
    server's 401 then says what is wrong, not a crash of the caller."""

    def __init__(self, connection: Connection) -> None:
        self._path = connection.token_file
        self._token = connection.token
        self._stamp: Stamp | None = None
        if self._path is not None:
            self._stamp = _stamp(pathlib.Path(self._path))

    def current(self, *, force: bool = False) -> str | None:
        if self._path is None:
            return self._token
        path = pathlib.Path(self._path)
        stamp = _stamp(path)
        if stamp is None or (stamp == self._stamp and not force):
            return self._token
        try:
            token = path.read_text().strip()
        except OSError:
            return self._token
        self._stamp = stamp
        if token:
            self._token = token
        return self._token


def _stamp(path: pathlib.Path) -> Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def current_token(connection: Connection) -> str | None:
    """The token as the file holds it now (kopf's login handler calls this on every login,
    which kopf repeats after a 401)."""
    return TokenFile(connection).current(force=True)


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
        token_file=str(SERVICE_ACCOUNT / "token"),
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
    token_file = None
    if not token and user.get("tokenFile"):
        token_file = str(base / str(user["tokenFile"]))
        token = pathlib.Path(token_file).read_text().strip()
    return Connection(
        server=str(cluster.get("server", "")).rstrip("/"),
        ca_data=_data(cluster, "certificate-authority", base),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        token=token,
        client_cert_data=_data(user, "client-certificate", base),
        client_key_data=_data(user, "client-key", base),
        default_namespace=str(context.get("namespace") or "default"),
        token_file=token_file,
    )
