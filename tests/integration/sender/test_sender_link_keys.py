"""A running sender and its keys over real loopback HTTP: rotating the admin token (and
restarting the pod, which re-derived every key from it before) leaves the links already sent
working; a link-key rotation of the mounted Secret is picked up without a restart; a key taken
out of the Secret is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from mailfleet_sender import hooks
from sandbox_fixtures.operator import wait_for
from sandbox_fixtures.sender import (
    ADMIN_TOKEN,
    LINK_KEY,
    LINK_KEY_NAME,
    RunningSender,
    SenderFactory,
    base_config,
    write_secret_volume,
)

RCPT = "reader@gmail.test"
ORIGINAL_MAIL = b"From: news@example.test\r\nTo: reader@gmail.test\r\nSubject: hi\r\n\r\nhi\r\n"


def _link(sender: RunningSender, recipient: str = RCPT) -> str:
    """The one-click URL path the pod puts into a marketing copy for `recipient`."""
    context = hooks.PrepareContext(recipient, "news@example.test", "marketing", True, "1",
                                   "127.0.0.1", 1)
    prepared = sender.service.deliverability.prepare(ORIGINAL_MAIL, context)
    header = prepared.split(b"\r\n", 1)[0].decode()
    return "/v1/unsubscribe/" + header.split("/v1/unsubscribe/", 1)[1].split(">", 1)[0]


async def _click(sender: RunningSender, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(
        f"{sender.client.public}{path}", data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as response:
        return response.status, await response.json()


def _config(tmp_path: Path, dns: DNSServer, fleet: ProviderFleet) -> dict[str, Any]:
    cfg = base_config(tmp_path, dns=dns, destination_port=fleet.port)
    cfg["deliverability"]["unsubscribeBaseUrl"] = "http://127.0.0.1:8080"
    return cfg


async def test_rotating_the_admin_token_breaks_no_link(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    cfg = _config(tmp_path, dns_server, provider_fleet)
    sender = await sender_factory(cfg, pod="news-0")
    link = _link(sender)
    await sender.stop()
    # The admin token rotated; the pod restarts with the new one.
    (tmp_path / "secrets" / "admin-token").write_text("a-brand-new-admin-token\n")
    again = await sender_factory(cfg, pod="news-0")
    status, _ = await again.client.request("GET", "/v1/stats", admin=True, token=ADMIN_TOKEN)
    assert status == 401  # the rotation took effect
    status, body = await _click(again, link)
    assert (status, body["result"]) == (200, "recorded")


async def test_a_link_key_rotation_is_picked_up_live_and_a_removed_key_is_refused(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    cfg = _config(tmp_path, dns_server, provider_fleet)
    sender = await sender_factory(cfg, pod="news-0")
    links = tmp_path / "secrets" / "links"
    keys = sender.service.deliverability.keys
    before = _link(sender)
    before_unused = _link(sender, "third@gmail.test")
    # A rotation as the kubelet delivers it: the new key next to the old one.
    new_key = "rotated-link-key-0123456789abcdef"
    write_secret_volume(links, {LINK_KEY_NAME: LINK_KEY, "key-1700000600": new_key})
    await wait_for(lambda: len(keys.links) == 2, within=30, message="the new key read")
    after = _link(sender, "other@gmail.test")
    assert (await _click(sender, before))[1]["result"] == "recorded"  # sealed before: good
    # The old key's lifetime is over: it leaves the Secret, its links stop working.
    write_secret_volume(links, {"key-1700000600": new_key})
    await wait_for(lambda: len(keys.links) == 1, within=30, message="the old key dropped")
    status, body = await _click(sender, before_unused)
    assert (status, body["code"]) == (400, "forged_token")
    status, body = await _click(sender, after)
    assert (status, body["result"]) == (200, "recorded")
