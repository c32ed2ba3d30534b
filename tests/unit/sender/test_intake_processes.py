"""How many intake processes a pod runs: the setting, else its CPU limit rounded up, else 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from mailfleet_sender import intake_workers


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("setting", "files", "expected"),
    [
        (None, {"cpu.max": "200000 100000\n"}, 2),
        (None, {"cpu.max": "150000 100000\n"}, 2),
        (None, {"cpu.max": "50000 100000\n"}, 1),
        (None, {"cpu.max": "max 100000\n"}, 1),
        (None, {"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
        (None, {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        (None, {}, 1),
        (4, {"cpu.max": "100000 100000\n"}, 4),
        (None, {"cpu.max": "garbage\n"}, 1),
    ],
    ids=[
        "a limit of two CPUs (cgroup v2) runs two",
        "a limit of 1.5 CPUs is rounded up",
        "half a CPU still runs one",
        "no limit (v2) runs one",
        "a CFS quota of three CPUs (cgroup v1) runs three",
        "no CFS quota (v1) runs one",
        "no cgroup files runs one",
        "the setting wins over the limit",
        "an unreadable limit runs one",
    ],
)
def test_processes_follow_the_setting_else_the_cpu_limit(
    tmp_path: Path, setting: int | None, files: dict[str, str], expected: int
) -> None:
    assert intake_workers.process_count(setting, _cgroup(tmp_path, files)) == expected
