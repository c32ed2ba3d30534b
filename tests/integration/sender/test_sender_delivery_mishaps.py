"""A delivery failure is the delivery's, not the worker's (issue 16): an exception inside one
attempt is retried with backoff (or bounced when no attempt can succeed) and the lane's
worker goes on; config that cannot work is refused when it is read."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from mailfleet_sender import config, hooks, hostnames, mishaps, wire
from sandbox_fixtures.sender import SenderFactory, base_config, lease, make_dkim_keys


async def test_an_exception_inside_one_delivery_is_retried_and_the_worker_lives_on(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port, keys=keys)
    cfg["throttles"] = {"defaults": {"maxConnections": 1}}  # one worker for the site
    sender = await sender_factory(cfg)
    engine = sender.service.engine
    raised: list[str] = []
    prepare = engine.hooks.prepare

    def flaky(data: bytes, context: hooks.PrepareContext) -> bytes:
        if context.recipient == "first@gmail.test" and not raised:
            raised.append(context.recipient)
            raise ValueError("RFC 8058 requires an https unsubscribe URL")
        return prepare(data, context)

    engine.hooks.prepare = flaky
    for rcpt in ("first@gmail.test", "second@gmail.test"):
        status, body = await sender.client.submit(
            {"from": "news@example.test", "to": [rcpt], "subject": rcpt, "text": "t",
             "class": "transactional"})
        assert status == 202, body
    await sender.client.assign([lease("127.0.0.81")])
    messages = await provider_fleet["gmail"].wait_for(2, timeout=30)
    assert sorted(m.header("Subject") or "" for m in messages) == [
        "first@gmail.test", "second@gmail.test"]
    assert raised == ["first@gmail.test"]
    assert engine.totals["mishaps"] == 1
    assert engine.totals["deferred"] == 1


def test_mishaps_retry_unless_the_message_is_gone() -> None:
    retry = mishaps.classify(ValueError("secret-ish config value"))
    assert not retry.permanent and retry.reply.code == 451
    assert "secret-ish" not in retry.reply.text
    gone = mishaps.classify(mishaps.MessageMissing("message 7"))
    assert gone.permanent and gone.reply.code == 554


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("deliverability:\n  unsubscribeBaseUrl: http://unsub.example.test\n",
         "unsubscribeBaseUrl"),
        ("delivery:\n  heloName: 'mta one.example.test'\n", "heloName"),
        ("delivery:\n  heloName: \"mta.example.test\\r\\nMAIL FROM:<x>\"\n", "heloName"),
    ],
    ids=["an http unsubscribe base URL", "a HELO name with a space",
         "a HELO name with a line break"],
)
def test_config_that_cannot_work_is_refused_when_it_loads(yaml_text: str, field: str) -> None:
    with pytest.raises(config.ConfigError, match=field):
        config.parse_config(yaml_text)


def test_working_names_and_urls_are_accepted() -> None:
    cfg = config.parse_config(
        "deliverability:\n  unsubscribeBaseUrl: https://unsub.example.test\n"
        "delivery:\n  heloName: mta-1.example.test\n"
    )
    assert cfg.delivery.helo_name == "mta-1.example.test"
    for name in ("mta.example.test", "localhost", "[192.0.2.1]", "[IPv6:2001:db8::1]"):
        assert hostnames.is_helo_name(name), name
    for name in ("", "a b", "-x.test", "[300.1.1.1]", "x" * 64 + ".test"):
        assert not hostnames.is_helo_name(name), name


def test_an_assignment_with_an_invalid_helo_name_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="EHLO"):
        wire.Lease.model_validate({"address": "127.0.0.1", "heloName": "bad name",
                                   "ttlSeconds": 30})
