"""The Dockerfiles: multi-stage, pinned bases, non-root numeric user, OCI labels.

Checked by reading them (no docker daemon here); `make images` builds them where one exists.
"""

from __future__ import annotations

import pathlib
import re

import pytest
from chart import chart_support as cs

DOCKERFILES = [p for p in (cs.ROOT / "operator" / "Dockerfile",
                           cs.ROOT / "sender-image" / "Dockerfile") if p.exists()]
OCI = ("title", "description", "source", "licenses", "version", "revision", "created")


def _instructions(path: pathlib.Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in lines if line and not line.startswith("#")]


def _args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    found = {}
    for op, rest in instructions:
        if op == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            found[name.strip()] = value.strip()
    return found


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(cs.ROOT)))
def test_dockerfile_follows_the_image_rules(path: pathlib.Path) -> None:
    instructions = _instructions(path)
    args = _args(instructions)
    bases = [rest.split()[0] for op, rest in instructions if op == "FROM"]
    assert len(bases) >= 2, "multi-stage: a build stage and a runtime stage"
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), base)
        if ":" not in image and "@" not in image:
            continue  # FROM <earlier stage>
        tag = image.split("@")[0].rsplit(":", 1)[1]
        assert tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), f"unpinned base {image}"
    users = [rest for op, rest in instructions if op == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), "the last USER is a non-root uid"
    labels = " ".join(rest for op, rest in instructions if op == "LABEL")
    for key in OCI:
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert not [rest for op, rest in instructions if op == "ADD" and "://" in rest]


def test_operator_image_entrypoint_matches_the_chart() -> None:
    instructions = _instructions(cs.ROOT / "operator" / "Dockerfile")
    entrypoint = [rest for op, rest in instructions if op == "ENTRYPOINT"][-1]
    assert entrypoint == '["mailfleet"]'
    deployment = cs.one(cs.objects(), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["operator", "run"]
    user = [rest for op, rest in instructions if op == "USER"][-1]
    assert int(user.split(":")[0]) == deployment["spec"]["template"]["spec"][
        "securityContext"]["runAsUser"]
