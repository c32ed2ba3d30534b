"""Hand-off carries the envelope in the body (issue 16): any number of recipients reaches the
other pod, a peer of the previous version still works both ways, and a message every peer
rejects is bounced after `giveUpAfter` instead of holding the drain open forever."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from mailfleet_sender import clock, config, envelopes, handoff, metrics, spool
from sandbox_fixtures.sender import (
    ADMIN_TOKEN,
    API_KEY,
    SenderProcess,
    base_config,
    make_pool,
    start_all,
)
from sandbox_fixtures.waiting import eventually

MESSAGE = b"From: news@example.test\r\nTo: list@gmail.test\r\nSubject: many\r\n\r\nbody\r\n"


async def test_a_message_with_1000_recipients_is_handed_off_and_the_drain_ends(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    process_reaper: list[SenderProcess],
) -> None:
    cfg = base_config(tmp_path / "a", dns=dns_server, destination_port=provider_fleet.port)
    cfg["deliverability"] = {**cfg["deliverability"], "handoff": {"retryEvery": "200ms"}}
    cfg_b = base_config(tmp_path / "b", dns=dns_server, destination_port=provider_fleet.port)
    [leaving] = make_pool(tmp_path / "a", cfg, ["127.0.0.61"], prefix="a")
    [receiving] = make_pool(tmp_path / "b", cfg_b, ["127.0.0.62"], prefix="b")
    process_reaper.extend([leaving, receiving])
    await start_all([leaving, receiving])
    recipients = [f"subscriber-number-{i:04d}@gmail.test" for i in range(1000)]
    status, body = await leaving.client.submit({
        "from": "news@example.test", "to": recipients, "subject": "many", "text": "body\n",
        "class": "transactional",
    })
    assert status == 202, body

    status, body = await leaving.client.request(
        "POST", "/v1/drain", admin=True, token=ADMIN_TOKEN,
        json={"handoff": True, "target": {"urls": [receiving.url], "apiKey": API_KEY}},
    )
    assert status == 202, body

    async def done() -> bool:
        return bool((await leaving.client.stats())["handoff"]["state"] == "done")

    await eventually(done, "hand-off of 1,000 recipients complete")
    stats = await leaving.client.stats()
    assert stats["handoff"]["handedOff"] == 1
    assert stats["handoff"]["bounced"] == 0
    received = await receiving.client.stats()
    assert sum(q["depth"] for q in received["queues"].values()) == 1000

    # The receiver still takes the previous version's form: the envelope in the query.
    status, body = await receiving.client.request(
        "POST", "/v1/messages?to=old@gmail.test&from=news@example.test&class=transactional",
        token=API_KEY, data=MESSAGE,
        headers={"Content-Type": "message/rfc822", "X-Mailfleet-Handoff": "k" * 40},
    )
    assert (status, body["recipients"]) == (202, 1)


# ------------------------------------------------------ the hand-off runner against fake peers


async def _peer(host: str, handler: Callable[[web.Request], Awaitable[web.Response]]
                ) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    return runner, f"http://{host}:{runner.addresses[0][1]}"


@contextlib.asynccontextmanager
async def marked_spool(tmp_path: Path, recipients: int) -> AsyncIterator[spool.Spool]:
    """A spool holding one message to `recipients` recipients, marked for hand-off."""
    store = spool.Spool.open(tmp_path / "spool")
    store.start()
    try:
        await store.submit(spool.NewMessage(
            sender="news@example.test",
            recipients=tuple(f"r{i:03d}@gmail.test" for i in range(recipients)),
            data=MESSAGE, from_domain="example.test", message_id="<m@example.test>",
            class_name="transactional", tier=None, created=time.time(),
        ))
        assert await store.mark_handoff() == recipients
        yield store
    finally:
        store.close()


def _runner(store: spool.Spool, urls: list[str], **cfg: str) -> handoff.HandOff:
    async def peers() -> list[str]:
        return urls

    return handoff.HandOff(
        spool_=store, peers=peers, self_urls=[], api_key="k", pod="pod-a",
        cfg=config.Handoff.model_validate({"retryEvery": "10ms", **cfg}),
        metric_set=metrics.Metrics(), clock_=clock.Clock(),
    )


async def test_a_peer_of_the_previous_version_gets_the_old_form_when_it_fits(
    tmp_path: Path,
) -> None:
    got: list[tuple[str, list[str]]] = []

    async def old_version(request: web.Request) -> web.Response:
        if request.content_type == envelopes.CONTENT_TYPE:
            return web.json_response({"error": "unsupported"}, status=415)
        got.append((request.content_type, request.query.getall("to")))
        assert await request.read() == MESSAGE
        return web.json_response({"id": "1", "messageId": "m", "recipients": 1}, status=202)

    server, url = await _peer("127.0.0.63", old_version)
    async with marked_spool(tmp_path, 100) as store:
        try:
            runner = _runner(store, [url])
            runner.start()
            await asyncio.wait_for(runner.wait(), timeout=30)
        finally:
            await server.cleanup()
        assert runner.state == "done"
        assert [(kind, len(to)) for kind, to in got] == [("message/rfc822", 100)]
        assert store.count_handoff() == 0


async def test_a_message_every_peer_rejects_is_bounced_after_give_up_after(
    tmp_path: Path,
) -> None:
    async def rejecting(request: web.Request) -> web.Response:
        body = await request.read()
        envelope, _ = envelopes.decode(body, max_envelope=len(body))
        assert len(envelope.recipients) == 300
        return web.json_response({"error": "bad request"}, status=400)

    servers = [await _peer(host, rejecting) for host in ("127.0.0.64", "127.0.0.65")]
    async with marked_spool(tmp_path, 300) as store:
        try:
            runner = _runner(store, [url for _, url in servers], giveUpAfter="200ms")
            runner.start()
            await asyncio.wait_for(runner.wait(), timeout=30)
        finally:
            for server, _ in servers:
                await server.cleanup()
        assert runner.state == "done"
        assert runner.bounced == 300
        assert "HTTP 400" in (runner.last_error or "")
        assert store.count_handoff() == 0
        assert store.load_pending() == []


async def test_a_peer_that_refuses_for_its_own_reasons_is_not_a_rejection(
    tmp_path: Path,
) -> None:
    """Draining (503) or a wrong key (401) says nothing about the message: never bounced."""
    answered = asyncio.Event()

    async def draining(request: web.Request) -> web.Response:
        answered.set()
        return web.json_response({"error": "draining"}, status=503)

    server, url = await _peer("127.0.0.66", draining)
    async with marked_spool(tmp_path, 300) as store:
        runner = _runner(store, [url], giveUpAfter="0s")
        try:
            runner.start()
            await asyncio.wait_for(answered.wait(), timeout=10)
            await runner.finish_now()
        finally:
            await server.cleanup()
        assert runner.bounced == 0
        assert store.count_handoff() == 300
