"""The `mailfleet` command lists every subcommand and fails clearly on unknown ones."""

import mailfleet_cli
import pytest


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        mailfleet_cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in mailfleet_cli.SUBCOMMANDS:
        assert name in out


def test_unknown_subcommand_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        mailfleet_cli.main(["no-such-command"])
    assert exc.value.code == 2
