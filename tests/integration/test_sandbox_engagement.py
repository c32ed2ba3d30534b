"""Readers at a simulated provider over real loopback sockets: tracked messages accepted over
SMTP are opened and clicked against a stand-in of the tracking endpoints on 127.0.0.23, with a
reader's or a prefetching proxy's User-Agent as decided, redirects recorded and not followed,
every status kept; over https the sandbox CA is required."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiosmtplib
import pytest
from mailfleet_sandbox import engagement, tracked_messages
from mailfleet_sandbox.certificates import SandboxCA
from mailfleet_sandbox.engagement import Endpoint, EngagementSettings
from mailfleet_sandbox.providers import SmtpReceiver
from sandbox_fixtures.tracking_standin import (
    STANDIN_ADDRESS,
    TrackingStandIn,
    mint_token,
    running_standin,
    tracked_message,
)

SETTINGS = EngagementSettings(open_share=0.6, proxy_share=0.4, click_share=0.4, seed="it-1",
                              human_delay_s=0.05, click_delay_s=0.05)


@pytest.fixture
async def gmail() -> AsyncIterator[SmtpReceiver]:
    async with SmtpReceiver("gmail", "127.0.0.1") as receiver:
        yield receiver


async def deliver(receiver: SmtpReceiver, data: bytes, rcpt: str) -> None:
    await aiosmtplib.send(data, sender="bounce@example.test", recipients=[rcpt],
                          hostname=receiver.host, port=receiver.port, start_tls=False,
                          timeout=10)


def token_of(data: bytes) -> str:
    tracked = tracked_messages.find_tracking(data)
    assert tracked is not None
    return tracked.token


async def test_readers_fetch_pixels_and_links_as_decided_and_do_not_follow_redirects(
    gmail: SmtpReceiver, tracking_standin: TrackingStandIn
) -> None:
    endpoints = {"track.test": Endpoint(STANDIN_ADDRESS, tracking_standin.port)}
    copies = {f"u{i}@gmail.test": tracked_message(f"m{i}", to=f"u{i}@gmail.test",
                                                  base="http://track.test")
              for i in range(16)}
    gone = tracked_message("gone", to="gone@gmail.test", base="http://track.test")
    tracking_standin.missing.add(token_of(gone))
    elsewhere = tracked_message("far", to="far@gmail.test", base="http://track.elsewhere.test")
    untracked = tracked_message("plain", to="plain@gmail.test", pixel=False,
                                base="http://track.test")
    always = EngagementSettings(open_share=1.0, click_share=0.0, human_delay_s=0.0)
    async with engagement.Engagement(SETTINGS, endpoints) as simulator, \
            engagement.Engagement(always, endpoints) as opener:
        simulator.attach(gmail)
        for rcpt, data in copies.items():
            await deliver(gmail, data, rcpt)
        await deliver(gmail, untracked, "plain@gmail.test")
        gmail.on_message = [opener.observe]  # these two are opened for sure
        await deliver(gmail, gone, "gone@gmail.test")
        await deliver(gmail, elsewhere, "far@gmail.test")
        await gmail.wait_for(len(copies) + 3)
        await simulator.settle()
        await opener.settle()

    expected_opens: list[tuple[str, str]] = []
    expected_clicks: list[str] = []
    for rcpt, data in copies.items():
        tracked = tracked_messages.find_tracking(data)
        assert tracked is not None
        decision = engagement.decide(SETTINGS, engagement.copy_key(tracked.token, rcpt),
                                     tracked.links)
        if decision.open:
            agent = SETTINGS.proxy_user_agent if decision.machine else SETTINGS.human_user_agent
            expected_opens.append((f"/t/o/{tracked.token}.gif", agent))
        if decision.click:
            expected_clicks.append(decision.click.removeprefix("http://track.test"))
    agents = {agent for _path, agent in expected_opens}
    assert agents == {SETTINGS.proxy_user_agent, SETTINGS.human_user_agent}, "seed covers both"
    assert expected_clicks, "the seed clicks something"

    opens = [(h.path, h.user_agent) for h in tracking_standin.hits_on("/t/o/")]
    gone_open = (f"/t/o/{token_of(gone)}.gif", engagement.HUMAN_USER_AGENT)
    assert sorted(opens) == sorted([*expected_opens, gone_open])
    clicks = tracking_standin.hits_on("/t/c/")
    assert sorted(h.path for h in clicks) == sorted(expected_clicks)
    assert {h.user_agent for h in clicks} == {SETTINGS.human_user_agent}
    assert {h.host for h in tracking_standin.hits} == {"track.test"}
    assert tracking_standin.hits_on("/landing/") == [], "redirects are recorded, not followed"

    assert len(simulator.records) == len(copies), "the copy without a pixel is not considered"
    fetches = [f for r in simulator.records for f in r.fetches]
    assert {f.status for f in fetches if f.kind == "open"} == {200}
    landing = f"http://{STANDIN_ADDRESS}:{tracking_standin.port}/landing/"
    assert all(f.status == 302 and (f.location or "").startswith(landing)
               for f in fetches if f.kind == "click")
    machine = sum(SETTINGS.proxy_user_agent == agent for _path, agent in expected_opens)
    assert simulator.simulated() == {"opens": len(expected_opens) - machine,
                                     "machine_opens": machine,
                                     "clicks": len(expected_clicks), "failed": 0}

    assert [(r.tracked_message, [(f.status, f.ok, f.error) for f in r.fetches])
            for r in opener.records] == [
        ("gone", [(404, False, None)]),
        ("far", [(None, False, "refused: host not mapped")]),
    ]
    assert opener.simulated() == {"opens": 0, "machine_opens": 0, "clicks": 0, "failed": 2}


async def test_over_https_the_tracking_host_name_is_verified_against_the_sandbox_ca(
    gmail: SmtpReceiver,
) -> None:
    ca = SandboxCA()
    issued = ca.issue(["track.test"])
    settings = EngagementSettings(open_share=1.0, proxy_share=0.0, click_share=1.0,
                                  human_delay_s=0.0, click_delay_s=0.0)
    async with running_standin(tls=issued.server_context()) as standin:
        right = {"track.test": Endpoint(STANDIN_ADDRESS, standin.port, "https", ca.pem)}
        wrong = {"track.test": Endpoint(STANDIN_ADDRESS, standin.port, "https",
                                        SandboxCA("another CA").pem)}
        async with engagement.Engagement(settings, right) as trusted, \
                engagement.Engagement(settings, wrong) as untrusted:
            gmail.on_message = [trusted.observe]
            await deliver(gmail, tracked_message("tls"), "alice@gmail.test")
            await trusted.settle()
            gmail.on_message = [untrusted.observe]
            await deliver(gmail, tracked_message("tls2"), "alice@gmail.test")
            await untrusted.settle()
    [record] = trusted.records
    assert [(f.kind, f.status) for f in record.fetches] == [("open", 200), ("click", 302)]
    assert trusted.simulated() == {"opens": 1, "machine_opens": 0, "clicks": 1, "failed": 0}
    [refused] = untrusted.records
    assert all(f.status is None and "Certificate" in (f.error or "") for f in refused.fetches)
    assert untrusted.simulated()["failed"] == 2
    token = mint_token("tls", "alice@gmail.test")
    assert [h.path.split("/")[2] for h in standin.hits] == ["o", "c"], "no request without trust"
    assert standin.hits[0].path == f"/t/o/{token}.gif"
    assert {h.host for h in standin.hits} == {"track.test"}


async def test_an_endpoint_that_does_not_answer_is_recorded_as_a_failure(
    gmail: SmtpReceiver,
) -> None:
    with socket.socket() as probe:
        probe.bind((STANDIN_ADDRESS, 0))
        closed_port = probe.getsockname()[1]
    settings = EngagementSettings(open_share=1.0, proxy_share=1.0, click_share=0.0)
    endpoints = {"track.test": Endpoint(STANDIN_ADDRESS, closed_port)}
    async with engagement.Engagement(settings, endpoints) as simulator:
        simulator.attach(gmail)
        await deliver(gmail, tracked_message("down", base="http://track.test"),
                      "alice@gmail.test")
        await simulator.settle()
    [record] = simulator.records
    [fetch] = record.fetches
    assert fetch.status is None and fetch.machine and fetch.error
    assert simulator.simulated() == {"opens": 0, "machine_opens": 0, "clicks": 0, "failed": 1}


async def test_a_failing_observer_does_not_cost_the_sender_its_250(gmail: SmtpReceiver) -> None:
    seen: list[str] = []

    def broken(message: object) -> None:
        raise RuntimeError("observer bug")

    gmail.on_message = [broken, lambda message: seen.append(message.rcpt_to[0])]
    await deliver(gmail, tracked_message("ok"), "alice@gmail.test")
    [message] = await gmail.wait_for(1)
    assert message.rcpt_to == ("alice@gmail.test",)
    assert seen == ["alice@gmail.test"], "later observers still see the message"
