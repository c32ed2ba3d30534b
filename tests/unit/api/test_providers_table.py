"""The built-in provider table matches real MX hosts, and spec entries override it by name."""

from __future__ import annotations

import pytest
from mailfleet_operator.api import providers, sendingpool


@pytest.mark.parametrize(
    ("mx_host", "provider"),
    [
        ("gmail-smtp-in.l.google.com", "gmail"),
        ("alt1.aspmx.l.google.com.", "gmail"),
        ("hotmail-com.olc.protection.outlook.com", "outlook"),
        ("contoso-com.mail.protection.outlook.com", "outlook"),
        ("mta5.am0.yahoodns.net", "yahoo"),
        ("mx-aol.mail.gm0.yahoodns.net", "yahoo"),
        ("mx01.mail.icloud.com", "apple"),
        ("smtp-in.orange.fr", "orange"),
        ("mx1.free.fr", "free"),
        ("mx2.sfr.fr", "sfr"),
        ("smtp-in.laposte.net", "laposte"),
        ("mx00.emig.gmx.net", "gmx"),
        ("mx-ha03.web.de", "gmx"),
        ("MX1.FREE.FR", "free"),
    ],
)
def test_builtin_table_recognises_real_mx_hosts(mx_host: str, provider: str) -> None:
    match = providers.match_provider(mx_host, providers.BUILTIN_PROVIDERS)
    assert match is not None and match.name == provider


@pytest.mark.parametrize("mx_host", ["mx.example.com", "google.com", "notgoogle.com.evil.net"])
def test_unknown_hosts_fall_through_to_the_defaults(mx_host: str) -> None:
    assert providers.match_provider(mx_host, providers.BUILTIN_PROVIDERS) is None


def test_builtin_entries_are_complete() -> None:
    names = [p.name for p in providers.BUILTIN_PROVIDERS]
    assert len(names) == len(set(names)) == 9
    for entry in providers.BUILTIN_PROVIDERS:
        assert entry.messages_per_second and entry.messages_per_hour and entry.max_connections


def test_a_spec_entry_replaces_the_builtin_one_of_the_same_name() -> None:
    throttling = sendingpool.Throttling.model_validate(
        {"providers": [{"name": "gmail", "mxPatterns": ["*.google.com"], "maxConnections": 2}]}
    )
    table = providers.effective_providers(throttling)
    assert [p.name for p in table].count("gmail") == 1
    gmail = providers.match_provider("aspmx.l.google.com", table)
    assert gmail is not None and gmail.max_connections == 2
    assert providers.match_provider("smtp-in.orange.fr", table) is not None


def test_builtin_table_can_be_switched_off() -> None:
    throttling = sendingpool.Throttling(builtin_providers=False)
    assert providers.effective_providers(throttling) == []
