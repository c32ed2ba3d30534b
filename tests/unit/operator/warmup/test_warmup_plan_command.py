"""`mailfleet warmup plan` previews a schedule day by day from a YAML file or flags, and
refuses a schedule that could never work with the path of the field to fix."""

from __future__ import annotations

import json
from pathlib import Path

import mailfleet_cli
import pytest

MULTI_DOC = """\
apiVersion: mailfleet.io/v1alpha1
kind: SendingPool
metadata: {name: pool-a}
spec: {replicas: 2}
---
apiVersion: mailfleet.io/v1alpha1
kind: IPWarmup
metadata: {name: classic}
spec:
  poolRef: {name: pool-a}
  schedule:
    linear: {start: 500, increment: 500}
  target: 5000
  providerShares:
    - {provider: gmail, maxShare: 0.4}
---
apiVersion: mailfleet.io/v1alpha1
kind: IPWarmup
metadata: {name: fast}
spec:
  poolRef: {name: pool-a}
  schedule:
    exponential: {start: 1000, factor: 2}
  target: 8000
"""


def plan(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = mailfleet_cli.main(["warmup", "plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def multi_doc(tmp_path: Path) -> Path:
    path = tmp_path / "warmups.yaml"
    path.write_text(MULTI_DOC)
    return path


def test_the_classic_linear_schedule_prints_a_table_with_provider_caps_and_a_chart(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = plan(
        ["--linear", "500,500", "--target", "5000", "--provider-share", "gmail=0.4"], capsys
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert "reached on day 10" in lines[1]
    assert lines[2].split() == ["day", "quota", "cumulative", "gmail"]
    assert lines[3].split() == ["1", "500", "500", "200"]
    assert lines[12].split() == ["10", "5000", "27500", "2000"]
    bars = [line for line in lines if line.startswith("day ") and "|" in line]
    assert len(bars) == 10
    assert bars[-1].count("#") == 40 and bars[0].count("#") == 4


def test_json_output_lists_every_day_for_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = plan(["--exponential", "200,2", "--target", "1000", "--json"], capsys)
    assert code == 0
    [result] = json.loads(out)
    assert [d["quota"] for d in result["days"]] == [200, 400, 800, 1000]
    assert result["daysToTarget"] == 4 and result["totalMessages"] == 2400


def test_a_multi_document_file_plans_only_its_ipwarmups(
    multi_doc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = plan(["-f", str(multi_doc), "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert [(r["name"], r["daysToTarget"]) for r in result] == [("classic", 10), ("fast", 4)]
    assert result[0]["days"][0]["providerCaps"] == {"gmail": 200}
    assert result[1]["poolRef"] == "pool-a"


def test_name_picks_one_ipwarmup_of_the_file(
    multi_doc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = plan(["-f", str(multi_doc), "--name", "fast", "--no-chart"], capsys)
    assert code == 0
    assert out.startswith("IPWarmup fast for pool pool-a\n")
    assert "|" not in out
    assert out.splitlines()[-1].split() == ["4", "8000", "15000"]


@pytest.mark.parametrize(
    ("spec_schedule", "target", "expected"),
    [
        pytest.param(
            "steps: [500, 1000, 2000]", 5000, "spec.schedule.steps: the last step (2000)",
            id="steps that end below the target are refused with their path",
        ),
        pytest.param(
            "linear: {start: 500, increment: 0}", 5000, "spec.schedule.linear.increment",
            id="a zero linear increment is refused by the schema with its path",
        ),
        pytest.param(
            "linear: {start: 0, increment: 500}", 5000, "spec.schedule.linear.start",
            id="a zero start is refused with its path",
        ),
        pytest.param(
            "exponential: {start: 500, factor: 1}", 5000, "spec.schedule.exponential.factor",
            id="an exponential factor of one is refused with its path",
        ),
        pytest.param(
            "linear: {start: 6000, increment: 500}", 5000, "spec: the schedule starts above",
            id="a target below the start is refused",
        ),
    ],
)
def test_a_schedule_that_can_never_work_exits_2_with_the_field_path(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    spec_schedule: str,
    target: int,
    expected: str,
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "apiVersion: mailfleet.io/v1alpha1\nkind: IPWarmup\nmetadata: {name: bad}\n"
        f"spec:\n  poolRef: {{name: pool-a}}\n  schedule: {{{spec_schedule}}}\n"
        f"  target: {target}\n"
    )
    code, out, err = plan(["-f", str(path)], capsys)
    assert (code, out) == (2, "")
    assert "IPWarmup bad" in err and expected in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(
            ["--linear", "500,0", "--target", "5000"], "spec.schedule.linear.increment",
            id="flags with a zero increment name the field that never lets it finish",
        ),
        pytest.param(
            ["--steps", "100,200", "--target", "5000"], "spec.schedule.steps",
            id="flag steps ending below the target are refused",
        ),
        pytest.param(["--linear", "500,500"], "--target is required", id="flags need a target"),
        pytest.param(
            ["--linear", "500", "--target", "5000"], "two numbers",
            id="a linear flag needs a start and an increment",
        ),
        pytest.param(
            ["--exponential", "500,fast", "--target", "5000"], "not a number",
            id="a factor that is not a number is refused",
        ),
        pytest.param(
            ["--linear", "500,500", "--target", "5000", "--provider-share", "gmail"],
            "PROVIDER=SHARE", id="a provider share needs a value",
        ),
        pytest.param(
            ["--linear", "500,500", "--target", "5000", "--provider-share", "gmail=1.5"],
            "spec.providerShares[0].maxShare", id="a provider share above one is refused",
        ),
        pytest.param([], "give -f FILE", id="no schedule at all says how to give one"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code, out, err = plan(argv, capsys)
    assert (code, out) == (2, "")
    assert expected in err


def test_a_file_without_ipwarmups_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text("kind: SendingPool\nmetadata: {name: pool-a}\n")
    code, _, err = plan(["-f", str(path)], capsys)
    assert code == 2 and "no IPWarmup in the file" in err


def test_a_missing_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = plan(["-f", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "cannot read" in err


def test_a_file_and_schedule_flags_together_are_refused(
    multi_doc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = plan(["-f", str(multi_doc), "--linear", "500,500"], capsys)
    assert code == 2 and "not both" in err


def test_warmup_without_a_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert mailfleet_cli.main(["warmup"]) == 2
    assert "warmup plan" in capsys.readouterr().err
