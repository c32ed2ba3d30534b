"""Egress IPs the operator refuses (`logic.egress_networks`, pure)."""

from __future__ import annotations

import pytest
from mailfleet_operator import settings
from mailfleet_operator.logic import egress_networks as en


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"), ("127.3.4.5", "loopback"), ("::1", "loopback"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"),
        ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
        ("224.0.0.5", "multicast"), ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
    ],
)
def test_the_default_refuses_what_no_cluster_can_send_from(address: str, kind: str) -> None:
    [message] = en.refusals([address], en.DEFAULT_REFUSED)
    assert message.startswith(f"egress IP {address} is in ") and f"({kind})" in message


@pytest.mark.parametrize("address", ["192.0.2.10", "203.0.113.7", "10.1.2.3", "2001:db8::1"])
def test_routable_addresses_pass(address: str) -> None:
    assert en.refusals([address], en.DEFAULT_REFUSED) == []


def test_the_sandbox_setting_allows_loopback_only() -> None:
    sandbox = en.allowing_loopback()
    assert en.refusals(["127.0.0.1", "::1"], sandbox) == []
    assert len(en.refusals(["0.0.0.0", "169.254.0.1", "224.0.0.1"], sandbox)) == 3


def test_the_setting_is_validated_and_read_from_the_environment() -> None:
    assert settings.Settings().refused_egress_networks == en.DEFAULT_REFUSED
    env = {"MAILFLEET_OPERATOR_REFUSED_EGRESS_NETWORKS": "0.0.0.0/32,169.254.0.0/16"}
    assert settings.Settings.from_env(env).refused_egress_networks == (
        "0.0.0.0/32", "169.254.0.0/16")
    with pytest.raises(ValueError, match="not-a-network"):
        settings.Settings(refused_egress_networks=("not-a-network",))
