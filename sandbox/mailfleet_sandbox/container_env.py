"""A container's environment and argv as the kubelet builds them: env and envFrom from
ConfigMaps, Secrets and the downward API, `$(VAR)` expansion, and the image's ENTRYPOINT
from the agent's image table (pure; a missing reference is a CreateContainerConfigError)."""

from __future__ import annotations

import datetime
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mailfleet_cli
import mailfleet_operator
import mailfleet_sender

from mailfleet_sandbox import volumes

JSON = dict[str, Any]
log = logging.getLogger(__name__)

SENDER_ARGV = [sys.executable, "-m", "mailfleet_sender"]
OPERATOR_ARGV = [sys.executable, "-m", "mailfleet_cli"]
OPERATOR_CMD = ["operator", "run"]
DEFAULT_IMAGE_SUBSTRINGS: tuple[tuple[str, list[str]], ...] = (
    ("mailfleet-sender", SENDER_ARGV), ("mailfleet/sender", SENDER_ARGV),
    ("mailfleet-operator", OPERATOR_ARGV), ("mailfleet/operator", OPERATOR_ARGV),
)
"""Images every agent knows (their ENTRYPOINT): any image whose name contains one of these."""
DEFAULT_IMAGE_CMD: tuple[tuple[str, list[str]], ...] = (
    ("mailfleet-operator", OPERATOR_CMD), ("mailfleet/operator", OPERATOR_CMD),
)
"""The CMD of those images (operator/Dockerfile): the arguments when a pod gives none."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def host_paths_to_keep(workdir: Path) -> list[str]:
    """What a pod's process needs from the host filesystem: this Python environment, the
    project's source tree (editable installs import from it) and the agent's own files."""
    roots = {sys.prefix, sys.base_prefix, str(Path(workdir).resolve())}
    sources = [str(Path(m.__file__).resolve().parent.parent)
               for m in (mailfleet_cli, mailfleet_operator, mailfleet_sender,
                         sys.modules[__name__]) if m.__file__]
    roots.update(sources)
    roots.add(os.path.commonpath(sources))  # the checkout itself, for editable installs
    return sorted(roots)


# --------------------------------------------------------------- container env (pure)
class ContainerConfigError(Exception):
    """The container cannot be created yet (CreateContainerConfigError)."""


def build_env(container: JSON, pod: JSON, lookup: volumes.Lookup) -> dict[str, str]:
    """env and envFrom, in the order Kubernetes applies them (envFrom first, env wins)."""
    out: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind, ref_key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(ref_key)
            if ref is None:
                continue
            obj = lookup(kind, ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'{kind.lower()} "{ref.get("name")}" not found')
            for key, value in volumes.object_data(kind, obj).items():
                out[prefix + key] = value.decode(errors="replace")
    for var in container.get("env") or []:
        name = var.get("name", "")
        if "value" in var or "valueFrom" not in var:
            out[name] = expand_vars(str(var.get("value") or ""), out)
            continue
        source = var["valueFrom"] or {}
        if "fieldRef" in source:
            try:
                out[name] = volumes.field_ref_value(pod, source["fieldRef"].get("fieldPath", ""))
            except volumes.VolumeError as exc:
                raise ContainerConfigError(str(exc)) from None
            continue
        for kind, ref_key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            ref = source.get(ref_key)
            if ref is None:
                continue
            obj = lookup(kind, ref.get("name", ""))
            data = volumes.object_data(kind, obj) if obj is not None else None
            if data is None or ref.get("key") not in data:
                if ref.get("optional"):
                    break
                if data is None:
                    raise ContainerConfigError(f'{kind.lower()} "{ref.get("name")}" not found')
                raise ContainerConfigError(
                    f"couldn't find key {ref.get('key')} in {kind} "
                    f"{(pod.get('metadata') or {}).get('namespace')}/{ref.get('name')}")
            out[name] = data[ref["key"]].decode(errors="replace")
            break
    return out


_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: known variables replaced, `$$` escapes, others kept."""
    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)
    return _VAR_REF.sub(sub, text)


def image_argv(image: str, table: Mapping[str, Sequence[str]],
               use_defaults: bool = True) -> list[str] | None:
    """The ENTRYPOINT for an image: exact name or longest prefix in `table`, then defaults."""
    candidates = [key for key in table if image == key or image.startswith(key)]
    if candidates:
        return list(table[max(candidates, key=len)])
    if use_defaults:
        for needle, argv in DEFAULT_IMAGE_SUBSTRINGS:
            if needle in image:
                return list(argv)
    return None
