"""Open and click tracking end to end over loopback: a tracked marketing message is rewritten
at submission, DKIM-signed at delivery (the signature verifies over the rewritten body), and
the pixel and the links of the message as received are fetched from the pods' public
listener: `opened` and `clicked` are recorded (machine fetches marked), forged or altered
tokens get 404 and record nothing, a class without tracking is delivered untouched."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import ssl
import time
from collections.abc import Mapping
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import dkim
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet, make_self_signed_cert
from sandbox_fixtures.sender import (
    SenderFactory,
    SenderProcess,
    base_config,
    lease,
    make_dkim_keys,
    make_pool,
    start_all,
)

TRACKING_KEY = "tracking-key-for-tests-0123456789"
BROWSER = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/126.0 Safari/537.36")
PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
PRODUCT = "https://shop.example.test/p/42?utm=mail&x=1"
THEIR_UNSUBSCRIBE = "https://shop.example.test/unsubscribe?u=alice"
POOL_UNSUBSCRIBE = "https://unsub.example.test/v1/unsubscribe/sometoken"
HTML = (
    "<html><body><p>Spring sale: <a href=\"https://shop.example.test/p/42?utm=mail&amp;x=1\">"
    "see it</a></p>\n"
    f'<p><a href="{THEIR_UNSUBSCRIBE}">unsubscribe</a> or '
    f'<a href="{POOL_UNSUBSCRIBE}">one-click</a> or <a href="mailto:help@shop.example.test">'
    "ask</a></p>\n</body></html>\n"
)
DEADLINE = 30.0


def _tracking_config(tmp: Path, dns: DNSServer, fleet: ProviderFleet) -> tuple[Any, Any]:
    keys = make_dkim_keys(tmp / "keys", "example.test", dns)
    cfg = base_config(tmp, dns=dns, destination_port=fleet.port, keys=keys)
    (tmp / "secrets" / "tracking-key").write_text(TRACKING_KEY + "\n")
    cfg["classes"] = [
        {"name": "transactional", "priority": 100},
        {"name": "marketing", "priority": 10, "bulk": True,
         "tracking": {"opens": True, "clicks": True}},
    ]
    cfg["tracking"] = {"keyFile": str(tmp / "secrets" / "tracking-key"), "machineWindow": "0s"}
    cfg["deliverability"] = {**cfg["deliverability"],
                             "unsubscribeBaseUrl": "https://unsub.example.test"}
    return cfg, keys


def _mail(to: str, klass: str) -> dict[str, Any]:
    return {"from": "Shop <news@example.test>", "to": [to], "subject": "Spring sale",
            "text": f"See {PRODUCT}\n", "html": HTML, "class": klass,
            "headers": {"List-Unsubscribe": f"<{THEIR_UNSUBSCRIBE}>"}}


def _parts(data: bytes) -> tuple[str, str]:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    html, text = message.get_body(("html",)), message.get_body(("plain",))
    assert isinstance(html, EmailMessage) and isinstance(text, EmailMessage)
    return str(html.get_content()), str(text.get_content())


def _events(log: Path) -> list[dict[str, Any]]:
    """The opened and clicked events of a pod's stdout (the other types are there too)."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with_schema = json.loads(line)
            if with_schema.get("schema") == "mailfleet.io/event/v1" and with_schema.get(
                    "type") in ("opened", "clicked"):
                found.append(with_schema)
    return found


async def _eventually_events(log: Path, count: int) -> list[dict[str, Any]]:
    started = time.monotonic()
    while len(events := _events(log)) < count:
        assert time.monotonic() - started < DEADLINE, f"{count} events not in {log}: {events}"
        await asyncio.sleep(0.05)
    return events


async def _get(url: str, agent: str | None, method: str = "GET",
               ssl_context: ssl.SSLContext | None = None) -> tuple[int, Mapping[str, str], bytes]:
    headers = {} if agent is None else {"User-Agent": agent}
    async with aiohttp.ClientSession(skip_auto_headers=["User-Agent"]) as http, http.request(
        method, url, headers=headers, allow_redirects=False, ssl=ssl_context or False,
    ) as response:
        return response.status, dict(response.headers), await response.read()


def _altered(token: str) -> str:
    last = token[-1]
    return token[:-1] + ("A" if last != "A" else "B")


async def test_a_tracked_message_verifies_and_its_pixel_and_links_are_recorded_at_any_pod(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess],
) -> None:
    cfg, keys = _tracking_config(tmp_path, dns_server, provider_fleet)
    pods = make_pool(tmp_path, cfg, ["127.0.0.124", "127.0.0.125"], prefix="track")
    for pod in pods:  # the tracking host routes to pod 0; pod 1 is reached the same way below
        pod.cfg["tracking"] = {**pod.cfg["tracking"], "baseUrl": pods[0].public_url}
        pod.rewrite_config()
    process_reaper.extend(pods)
    await start_all(pods)
    for pod in pods:
        assert pod.pod_ip is not None
        await pod.client.assign([lease(pod.pod_ip)])

    status, tracked = await pods[0].client.submit(_mail("alice@gmail.test", "marketing"))
    assert status == 202, tracked
    status, plain = await pods[0].client.submit(_mail("bob@gmail.test", "transactional"))
    assert status == 202, plain
    gmail = provider_fleet["gmail"]
    await gmail.wait_for(2, timeout=DEADLINE)
    received = {m.rcpt_to[0]: m for m in gmail.messages}

    # Rewritten before signing: the signature covers the tracked body and verifies.
    message = received["alice@gmail.test"]
    assert dkim.DKIM(message.data).verify(dnsfunc=keys.dnsfunc)
    assert message.verdicts.get("dkim") == "pass"
    assert message.header("List-Unsubscribe") == f"<{THEIR_UNSUBSCRIBE}>"
    html, text = _parts(message.data)
    assert PRODUCT not in html and PRODUCT in text  # the text part is not touched
    for kept in (THEIR_UNSUBSCRIBE, POOL_UNSUBSCRIBE, "mailto:help@shop.example.test"):
        assert f'href="{kept}"' in html
    [link] = re.findall(r'href="([^"]+/t/c/[^"]+)"', html)
    [pixel] = re.findall(r'<img src="([^"]+/t/o/[^"]+\.gif)" width="1" height="1" alt="">',
                         html)
    assert link.startswith(pods[0].public_url) and pixel.startswith(pods[0].public_url)

    # The class without tracking is delivered as submitted.
    untouched = received["bob@gmail.test"]
    assert dkim.DKIM(untouched.data).verify(dnsfunc=keys.dnsfunc)
    assert _parts(untouched.data)[0].replace("\r\n", "\n") == HTML

    # An image proxy fetches the pixel at pod 0, a reader clicks at pod 1.
    status, headers, body = await _get(pixel, PROXY)
    assert (status, headers["Content-Type"]) == (200, "image/gif")
    assert "no-store" in headers["Cache-Control"] and body.startswith(b"GIF89a")
    clicked_at_pod_1 = link.replace(pods[0].public_url, pods[1].public_url)
    status, headers, _ = await _get(clicked_at_pod_1, BROWSER)
    assert (status, headers["Location"]) == (302, PRODUCT)

    # Forged, altered or misused tokens: 404, nothing recorded, no redirect.
    link_token = link.rsplit("/", 1)[1]
    pixel_token = pixel.rsplit("/", 1)[1].removesuffix(".gif")
    for url in (
        f"{pods[0].public_url}/t/c/{_altered(link_token)}",
        f"{pods[1].public_url}/t/o/{_altered(pixel_token)}.gif",
        f"{pods[0].public_url}/t/c/{link_token[:-4]}",
        f"{pods[0].public_url}/t/c/{pixel_token}",  # an open token is no link
        f"{pods[0].public_url}/t/o/{link_token}.gif",
        f"{pods[0].public_url}/t/c/eyJtIjoiMSIsInIiOm51bGwsInUiOiJodHRwczovL2V2aWwuZXhhbXBsZS8i"
        "LCJrIjoiYyJ9.AAAAAAAAAAAAAAAAAAAAAA",  # a hand-made token to evil.example
    ):
        status, headers, _ = await _get(url, BROWSER)
        assert status == 404 and "Location" not in headers, url

    [opened] = await _eventually_events(pods[0].log_path, 1)
    [clicked] = await _eventually_events(pods[1].log_path, 1)
    assert (opened["type"], opened["machine"], opened["url"]) == ("opened", True, None)
    assert (clicked["type"], clicked["machine"], clicked["url"]) == ("clicked", False, PRODUCT)
    for event in (opened, clicked):
        assert event["message_id"] == tracked["id"]
        assert (event["recipient"], event["class"], event["pool"], event["tags"]) == (
            "alice@gmail.test", "marketing", "test-pool", {})
    # Pod 0 delivered the message: it names the IP and the provider (the test config names
    # no provider table: "other"); pod 1 cannot know them.
    assert (opened["ip"], opened["provider"]) == ("127.0.0.124", "other")
    assert (clicked["ip"], clicked["provider"]) == (None, None)
    _, metrics = await pods[0].client.request("GET", "/metrics")
    assert 'mailfleet_sender_tracking_requests_total{kind="click",result="refused"} 4.0' in metrics
    assert 'mailfleet_sender_tracking_requests_total{kind="open",result="refused"} 1.0' in metrics
    assert 'mailfleet_sender_tracking_requests_total{kind="open",result="machine"} 1.0' in metrics
    assert 'mailfleet_sender_tracking_rewritten_messages_total{class="marketing"} 1.0' in metrics


class ListSink:
    def __init__(self) -> None:
        self.events: list[Mapping[str, object]] = []

    def record(self, event: Mapping[str, object]) -> None:
        self.events.append(event)


async def test_the_public_listener_serves_tracking_over_tls_and_machine_rules_apply(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    cfg, _ = _tracking_config(tmp_path, dns_server, provider_fleet)
    cert, key = make_self_signed_cert("track.example.test")
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    cfg["tracking"].update(host="track.example.test", machineWindow="1h",
                           tlsCertFile=str(tmp_path / "tls.crt"),
                           tlsKeyFile=str(tmp_path / "tls.key"))
    sender = await sender_factory(cfg)
    sink = ListSink()
    sender.service.tracker.sink = sink
    await sender.client.assign([lease("127.0.0.126")])
    status, body = await sender.client.submit(_mail("carol@gmail.test", "marketing"))
    assert status == 202, body
    [message] = await provider_fleet["gmail"].wait_for(1, timeout=DEADLINE)
    html, _ = _parts(message.data)
    [link] = re.findall(r'href="(https://track\.example\.test/t/c/[^"]+)"', html)
    [pixel] = re.findall(r'src="(https://track\.example\.test/t/o/[^"]+)"', html)
    origin = f"https://127.0.0.1:{sender.service.public_port}"

    trusting = ssl.create_default_context(cadata=cert.decode())
    trusting.check_hostname = False
    status, _, _ = await _get(pixel.replace("https://track.example.test", origin), BROWSER,
                                    ssl_context=trusting)
    assert status == 200
    status, _, _ = await _get(link.replace("https://track.example.test", origin), BROWSER,
                              method="HEAD", ssl_context=trusting)
    assert status == 302
    # Within the machine window of the delivery a browser is still counted as a machine,
    # and so is a HEAD request (a scanner checking the link).
    assert [(e["type"], e["machine"]) for e in sink.events] == [
        ("opened", True), ("clicked", True)]

    # The certificate is reloaded when the Secret's files change.
    new_cert, new_key = make_self_signed_cert("track.example.test")
    (tmp_path / "tls.key").write_bytes(new_key)
    (tmp_path / "tls.crt").write_bytes(new_cert)
    sender.service.check_reload()
    renewed = ssl.create_default_context(cadata=new_cert.decode())
    renewed.check_hostname = False
    status, _, _ = await _get(pixel.replace("https://track.example.test", origin), BROWSER,
                              ssl_context=renewed)
    assert status == 200
    assert len(sink.events) == 3
