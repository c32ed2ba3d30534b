"""Pod volumes for the sandbox node agent: what the kubelet writes, and how a process sees it.

Three parts:

- Payloads (pure, no I/O): the files a configMap, secret, downwardAPI or projected volume holds
  for a pod, with `items`, `defaultMode`/`mode` and `optional` as the kubelet applies them.
- `AtomicWriter`: the kubelet's atomic-writer layout, so code that watches a mounted ConfigMap
  sees exactly what it would in a pod: files live in a timestamped `..2026_01_02_15_04_05.N`
  directory, `..data` is a symlink to it that is swapped by `rename(2)` (atomic), and each
  user-visible name is a symlink to `..data/<name>`. An update writes a new timestamped
  directory, swaps `..data`, then removes the old one.
- Mount namespaces: processes are not in containers, but they must see volumes at the paths
  the pod spec names (`/etc/mailfleet/config.yaml`, `/var/lib/mailfleet/spool`), because the
  operator renders those absolute paths into the sender's config. The agent therefore starts
  every container through `python -m mailfleet_sandbox.volumes init PLAN.json -- ARGV`,
  which enters new mount and UTS namespaces (`unshare(2)`, plus a user namespace when not
  root), makes mounts private, bind-mounts each volume at its mountPath (read-only where the
  spec says so), sets the hostname to the pod's name and execs the container's argv. The pid
  the agent holds is the container process itself. Mount points that do not exist on the host
  are created inside a tmpfs-backed overlay of their nearest existing ancestor, so the host's
  filesystem is never written to; mounts below that ancestor (Docker's /etc/resolv.conf, for
  instance) are bound back on top of the overlay. The process also gets SIGKILL when the agent
  dies (`PR_SET_PDEATHSIG`), so a killed test run leaves no pods behind.
  Where namespaces are unavailable (`mount_namespaces_available()` is False), the agent falls
  back to rewriting mountPath prefixes in the container's command, args and env values, which
  is weaker (paths inside config files are not rewritten) and logged as such.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import datetime
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JSON = dict[str, Any]

DEFAULT_MODE = 0o644
"""The kubelet's default file mode for configMap, secret, downwardAPI and projected volumes."""
DATA_DIR = "..data"


class VolumeError(Exception):
    """A volume cannot be set up yet (missing ConfigMap, Secret or key): the pod waits."""


@dataclass(frozen=True)
class FileEntry:
    data: bytes
    mode: int = DEFAULT_MODE


Payload = dict[str, FileEntry]
Lookup = Callable[[str, str], "JSON | None"]
"""(kind, name) -> the object in the pod's namespace, or None; kind is ConfigMap or Secret."""


# ------------------------------------------------------------------------------ payloads
def object_data(kind: str, obj: JSON) -> dict[str, bytes]:
    """A ConfigMap's data+binaryData or a Secret's decoded data, key -> bytes."""
    out: dict[str, bytes] = {}
    if kind == "ConfigMap":
        for key, value in (obj.get("data") or {}).items():
            out[key] = str(value).encode()
        for key, value in (obj.get("binaryData") or {}).items():
            out[key] = base64.b64decode(value)
    else:
        for key, value in (obj.get("data") or {}).items():
            out[key] = base64.b64decode(value)
        for key, value in (obj.get("stringData") or {}).items():
            out[key] = str(value).encode()
    return out


def _keyed_payload(kind: str, name: str, source: JSON, obj: JSON | None,
                   default_mode: int) -> Payload:
    optional = bool(source.get("optional"))
    if obj is None:
        if optional:
            return {}
        raise VolumeError(f'{kind.lower()} "{name}" not found')
    data = object_data(kind, obj)
    items = source.get("items")
    if not items:
        return {key: FileEntry(value, default_mode) for key, value in data.items()}
    out: Payload = {}
    for item in items:
        key = item.get("key", "")
        if key not in data:
            if optional:
                continue
            raise VolumeError(f'configmap references non-existent config key: {key}'
                              if kind == "ConfigMap" else
                              f'references non-existent secret key: {key}')
        out[item.get("path") or key] = FileEntry(data[key], int(item.get("mode", default_mode)))
    return out


def _format_map(values: Mapping[str, Any]) -> str:
    """Labels/annotations as the downward API writes them: sorted `key="value"` lines."""
    return "\n".join(f"{k}={json.dumps(str(v))}" for k, v in sorted(values.items()))


def field_ref_value(pod: JSON, field_path: str) -> str:
    """The value of a downward API fieldRef (env or volume) for a pod."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    for prefix, source in (("metadata.labels", meta.get("labels")),
                           ("metadata.annotations", meta.get("annotations"))):
        if field_path == prefix:
            return _format_map(source or {})
        if field_path.startswith(prefix + "['") and field_path.endswith("']"):
            return str((source or {}).get(field_path[len(prefix) + 2:-2], ""))
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"), "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(ip.get("ip", "") for ip in status.get("podIPs") or []),
        "status.hostIPs": ",".join(ip.get("ip", "") for ip in status.get("hostIPs") or []),
    }
    if field_path not in simple:
        raise VolumeError(f"unsupported fieldRef fieldPath {field_path!r}")
    return str(simple[field_path] or "")


def downward_payload(items: Sequence[JSON], pod: JSON, default_mode: int) -> Payload:
    out: Payload = {}
    for item in items:
        ref = item.get("fieldRef")
        if not ref:
            continue  # resourceFieldRef: the sandbox sets no resource limits
        value = field_ref_value(pod, ref.get("fieldPath", ""))
        out[item["path"]] = FileEntry(value.encode(), int(item.get("mode", default_mode)))
    return out


def volume_payload(volume: JSON, pod: JSON, lookup: Lookup) -> Payload | None:
    """The files of a configMap/secret/downwardAPI/projected volume; None for other types."""
    if "configMap" in volume:
        src = volume["configMap"] or {}
        mode = int(src.get("defaultMode", DEFAULT_MODE))
        return _keyed_payload("ConfigMap", src.get("name", ""), src,
                              lookup("ConfigMap", src.get("name", "")), mode)
    if "secret" in volume:
        src = volume["secret"] or {}
        mode = int(src.get("defaultMode", DEFAULT_MODE))
        return _keyed_payload("Secret", src.get("secretName", ""), src,
                              lookup("Secret", src.get("secretName", "")), mode)
    if "downwardAPI" in volume:
        src = volume["downwardAPI"] or {}
        return downward_payload(src.get("items") or [], pod,
                                int(src.get("defaultMode", DEFAULT_MODE)))
    if "projected" in volume:
        src = volume["projected"] or {}
        mode = int(src.get("defaultMode", DEFAULT_MODE))
        out: Payload = {}
        for part in src.get("sources") or []:
            if "configMap" in part:
                cm = part["configMap"] or {}
                out.update(_keyed_payload("ConfigMap", cm.get("name", ""), cm,
                                          lookup("ConfigMap", cm.get("name", "")), mode))
            elif "secret" in part:
                sec = part["secret"] or {}
                out.update(_keyed_payload("Secret", sec.get("name", ""), sec,
                                          lookup("Secret", sec.get("name", "")), mode))
            elif "downwardAPI" in part:
                out.update(downward_payload((part["downwardAPI"] or {}).get("items") or [],
                                            pod, mode))
            elif "serviceAccountToken" in part:
                source = part["serviceAccountToken"] or {}
                token = lookup("ServiceAccountToken", str(source.get("audience") or ""))
                if token is None:
                    raise VolumeError("service account token not issued yet")
                out[source.get("path") or "token"] = FileEntry(
                    str(token.get("token", "")).encode(), mode)
        return out
    return None


# ------------------------------------------------------------------------- atomic writer
class AtomicWriter:
    """Writes payloads into `target` with the kubelet's `..data` symlink swap."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self._last: Payload | None = None

    def write(self, payload: Payload) -> bool:
        """Project `payload`; False (and nothing touched) when it is what is already there."""
        self.target.mkdir(parents=True, exist_ok=True)
        data_link = self.target / DATA_DIR
        if self._last == payload and data_link.is_symlink():
            return False
        old_dir = os.readlink(data_link) if data_link.is_symlink() else None
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y_%m_%d_%H_%M_%S")
        ts_name = f"..{stamp}.{random.randrange(10**9)}"
        ts_dir = self.target / ts_name
        ts_dir.mkdir(mode=0o755)
        for rel, entry in payload.items():
            path = ts_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(entry.data)
            os.chmod(path, entry.mode)
        tmp_link = self.target / "..data_tmp"
        if tmp_link.is_symlink():
            tmp_link.unlink()
        os.symlink(ts_name, tmp_link)
        os.rename(tmp_link, data_link)
        top = {rel.split("/", 1)[0] for rel in payload}
        for name in top:
            link = self.target / name
            if not link.is_symlink():
                os.symlink(f"{DATA_DIR}/{name}", link)
        for child in self.target.iterdir():
            if child.name.startswith(".."):
                continue
            if child.is_symlink() and child.name not in top:
                child.unlink()
        if old_dir and old_dir != ts_name:
            shutil.rmtree(self.target / old_dir, ignore_errors=True)
        self._last = dict(payload)
        return True


# ------------------------------------------------------------------------ mount plans
@dataclass(frozen=True)
class BindMount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the init step needs to turn itself into the container's process."""

    argv: list[str]
    env: dict[str, str]
    mounts: list[BindMount]
    hostname: str
    scratch: str
    workdir: str = ""
    # Host directories the process itself needs (the Python environment, the source tree, the
    # sandbox's own files). A pod volume mounted over one of their ancestors (an emptyDir at
    # /tmp while the checkout lives under /tmp) would hide them; they are bound back on top.
    keep: list[str] = field(default_factory=list)

    def dump(self) -> str:
        return json.dumps({"argv": self.argv, "env": self.env, "hostname": self.hostname,
                           "scratch": self.scratch, "workdir": self.workdir,
                           "keep": self.keep, "mounts": [m.__dict__ for m in self.mounts]})

    @staticmethod
    def load(text: str) -> LaunchPlan:
        raw = json.loads(text)
        return LaunchPlan(argv=raw["argv"], env=raw["env"], hostname=raw["hostname"],
                          scratch=raw["scratch"], workdir=raw.get("workdir", ""),
                          keep=list(raw.get("keep", [])),
                          mounts=[BindMount(**m) for m in raw["mounts"]])


def hidden_paths(keep: Sequence[str], mounts: Sequence[BindMount]) -> list[str]:
    """The kept host paths that some mount target covers (equal to, or an ancestor of, them)."""
    out = []
    for path in keep:
        inside = path.rstrip("/") + "/"
        if any(inside.startswith(m.target.rstrip("/") + "/") for m in mounts):
            out.append(path)
    return out


def rewrite_paths(value: str, mounts: Sequence[BindMount]) -> str:
    """The no-namespace fallback: a value starting with a mountPath points at the host path."""
    for mount in sorted(mounts, key=lambda m: len(m.target), reverse=True):
        target = mount.target.rstrip("/")
        if value == target or value.startswith(target + "/"):
            return mount.source + value[len(target):]
    return value


def init_command(plan_file: Path) -> list[str]:
    """The argv that starts a container through the namespace init step."""
    return [sys.executable, "-m", "mailfleet_sandbox.volumes", "init", str(plan_file)]


_PR_SET_PDEATHSIG = 1
_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWUSER = 0x10000000
_MS_RDONLY = 1
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None,
           flags: int, data: str | None = None) -> None:
    rc = libc.mount(source.encode() if source else None, target.encode(),
                    fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                    data.encode() if data else None)
    _check(rc, f"mount {source} on {target}")


def _enter_namespaces(libc: ctypes.CDLL) -> None:
    uid, gid = os.geteuid(), os.getegid()
    flags = _CLONE_NEWNS | _CLONE_NEWUTS
    if uid != 0:
        flags |= _CLONE_NEWUSER
    _check(libc.unshare(flags), "unshare")
    if uid != 0:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    _mount(libc, None, "/", None, _MS_REC | _MS_PRIVATE)


def _submounts(path: str) -> list[str]:
    """Mount points strictly below `path`, outermost first (from /proc/self/mountinfo)."""
    out = []
    prefix = path.rstrip("/") + "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(prefix):
            out.append(point)
    return sorted(set(out), key=lambda p: p.count("/"))


def _make_mount_point(libc: ctypes.CDLL, target: str, is_file: bool, scratch: str,
                      counter: list[int], overlaid: list[str] | None = None) -> None:
    """Create `target` without writing to the host: overlay its nearest existing ancestor.

    An ancestor inside an overlay made earlier is already writable (its upper dir is in the
    scratch tmpfs): the mount point is created there directly, since stacking a second overlay
    on an overlay exceeds the kernel's stacking depth (EINVAL) after two levels."""
    if os.path.lexists(target):
        return
    ancestor = os.path.dirname(target.rstrip("/")) or "/"
    while not os.path.isdir(ancestor):
        ancestor = os.path.dirname(ancestor) or "/"
    if overlaid is not None and any(
            ancestor == root or ancestor.startswith(root.rstrip("/") + "/")
            for root in overlaid):
        if is_file:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            Path(target).touch()
        else:
            os.makedirs(target, exist_ok=True)
        return
    if overlaid is not None:
        overlaid.append(ancestor)
    counter[0] += 1
    base = os.path.join(scratch, str(counter[0]))
    orig, upper, work = (os.path.join(base, d) for d in ("orig", "upper", "work"))
    for d in (orig, upper, work):
        os.makedirs(d)
    below = _submounts(ancestor)
    _mount(libc, ancestor, orig, None, _MS_BIND | _MS_REC)
    _mount(libc, "overlay", ancestor, "overlay", 0,
           f"lowerdir={orig},upperdir={upper},workdir={work}")
    for point in below:
        rel = os.path.relpath(point, ancestor)
        if os.path.lexists(os.path.join(ancestor, rel)):
            _mount(libc, os.path.join(orig, rel), os.path.join(ancestor, rel), None,
                   _MS_BIND | _MS_REC)
    if is_file:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        Path(target).touch()
    else:
        os.makedirs(target, exist_ok=True)


def _apply_plan(plan: LaunchPlan) -> None:
    libc = _libc()
    _enter_namespaces(libc)
    _mount(libc, "tmpfs", plan.scratch, "tmpfs", 0, "mode=700")
    counter = [0]
    overlaid: list[str] = []
    # A mount over an ancestor of the scratch directory (an emptyDir at /tmp while the sandbox
    # lives under /tmp) would hide the scratch tmpfs from the mounts after it: do those last.
    scratch = plan.scratch.rstrip("/") + "/"
    hiding = [m.target.rstrip("/") + "/" for m in plan.mounts
              if scratch.startswith(m.target.rstrip("/") + "/")]
    ordered = sorted(plan.mounts, key=lambda m: any(
        (m.target.rstrip("/") + "/").startswith(h) for h in hiding))
    # Hold the kept paths open before anything covers them, and bind them back afterwards
    # through /proc/self/fd (the host path itself is no longer reachable by then).
    held = {path: os.open(path, os.O_PATH | os.O_DIRECTORY)
            for path in hidden_paths(plan.keep, plan.mounts) if os.path.isdir(path)}
    for mount in ordered:
        source = os.path.realpath(mount.source)
        _make_mount_point(libc, mount.target, os.path.isfile(source), plan.scratch, counter,
                          overlaid)
        _mount(libc, source, mount.target, None, _MS_BIND | _MS_REC)
        if mount.read_only:
            _mount(libc, None, mount.target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY)
    for path, fd in held.items():
        # The covering volume is usually a writable emptyDir: the mount point is made in it
        # (the scratch tmpfs may be covered too, so no overlay unless the volume is read-only).
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            _make_mount_point(libc, path, False, plan.scratch, counter, overlaid)
        _mount(libc, f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
        os.close(fd)
    if plan.hostname:
        socket.sethostname(plan.hostname)


_namespaces_checked: list[bool] = []


def mount_namespaces_available(scratch: Path) -> bool:
    """Whether this machine lets us build a pod's mount namespace (tried once per process,
    in a child, using `scratch` for its files)."""
    if not _namespaces_checked:
        _namespaces_checked.append(_try_namespaces(scratch))
    return _namespaces_checked[0]


def _try_namespaces(scratch: Path) -> bool:
    scratch.mkdir(parents=True, exist_ok=True)
    source = scratch / "probe-src"
    source.mkdir(exist_ok=True)
    (source / "ok").write_text("ok")
    tmp = scratch / "probe-tmp"
    tmp.mkdir(exist_ok=True)
    plan = LaunchPlan(argv=[sys.executable, "-c", "print(open('/etc/mailfleet-probe/ok').read())"],
                      env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                      mounts=[BindMount(str(source), "/etc/mailfleet-probe/", True)],
                      hostname="probe", scratch=str(tmp))
    plan_file = scratch / "probe.json"
    plan_file.write_text(plan.dump())
    try:
        done = subprocess.run(init_command(plan_file), capture_output=True, timeout=20,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.strip() == b"ok"


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when the one that started it dies (PR_SET_PDEATHSIG, kept across
    exec): a crashed or killed test run must not leave pods (or control plane processes)
    running and holding their addresses. A kubelet's containers outlive it; sandbox pods are
    the agent's."""
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    if os.getppid() != parent:  # the agent died before the prctl
        os._exit(137)


def main(argv: Sequence[str]) -> int:
    """`init PLAN.json`: enter namespaces, mount, exec (see the module docstring)."""
    if len(argv) != 2 or argv[0] != "init":
        print("usage: python -m mailfleet_sandbox.volumes init PLAN.json", file=sys.stderr)
        return 2
    parent = os.getppid()
    plan = LaunchPlan.load(Path(argv[1]).read_text())
    try:
        die_with_parent(parent)
        _apply_plan(plan)
        if plan.workdir:
            os.chdir(plan.workdir)
        os.execvpe(plan.argv[0], plan.argv, plan.env)
    except OSError as exc:
        print(f"sandbox pod init failed: {exc}", file=sys.stderr)
        return 128
    return 0  # not reached: execvpe replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
