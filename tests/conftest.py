"""Shared test set-up: every module in tests/sandbox_fixtures/ is loaded as a pytest plugin,
so fixtures for the sandbox parts (API emulator, DNS, providers, senders) are defined once."""

from pathlib import Path

pytest_plugins = sorted(
    f"sandbox_fixtures.{path.stem}"
    for path in (Path(__file__).parent / "sandbox_fixtures").glob("*.py")
    if path.stem != "__init__"
)
