"""The engagement simulator's rules: which messages count (only those with an open pixel), what
their readers do (deterministic for a seed, close to the configured shares over many
messages), and that a URL on a host outside the sandbox's endpoint map is never fetched.
HTTP is replaced by a recording fetcher here; tests/integration/test_sandbox_engagement.py
fetches for real over loopback."""

from __future__ import annotations

import time
from email.message import EmailMessage

import pytest
from mailfleet_sandbox import engagement, tracked_messages
from mailfleet_sandbox.engagement import Endpoint, EngagementSettings
from mailfleet_sandbox.providers import ReceivedMessage
from sandbox_fixtures.tracking_standin import mint_token, tracked_message

ENDPOINTS = {"track.test": Endpoint("127.0.0.23", 8080)}
INSTANT = dict(human_delay_s=0.0, click_delay_s=0.0)


def received(data: bytes, *rcpts: str, provider: str = "gmail") -> ReceivedMessage:
    return ReceivedMessage(provider=provider, peer_ip="127.0.0.7", helo="out.example.test",
                           mail_from="bounce@example.test", rcpt_to=rcpts or ("alice@gmail.test",),
                           data=data, received_at=time.time(), tls=False)


class RecordingFetcher:
    """Answers every GET like the tracking endpoints would, and remembers it."""

    def __init__(self, answers: dict[str, int | Exception] | None = None) -> None:
        self.calls: list[tuple[str, Endpoint, str, str]] = []
        self.answers = answers or {}

    async def __call__(self, target: str, endpoint: Endpoint, host: str,
                       agent: str) -> tuple[int, str | None]:
        self.calls.append((target, endpoint, host, agent))
        for fragment, answer in self.answers.items():
            if fragment in target:
                if isinstance(answer, Exception):
                    raise answer
                return answer, None
        if "/t/c/" in target:
            return 302, "https://shop.example/spring"
        return 200, None


# --------------------------------------------------------------------------- reading a message


def test_pixel_and_tracked_links_are_found_in_a_quoted_printable_html_part() -> None:
    data = tracked_message("m1", links=["https://shop.example/a", "https://shop.example/a",
                                        "https://shop.example/b"])
    tracked = tracked_messages.find_tracking(data)
    assert tracked is not None
    assert tracked.pixel == f"https://track.test/t/o/{mint_token('m1', 'alice@gmail.test')}.gif"
    assert len(tracked.links) == 2, "same tracked link twice is one link; untracked links none"
    assert all("/t/c/" in link for link in tracked.links)


def test_a_base64_latin1_html_part_is_decoded_like_a_mail_client_would() -> None:
    data = tracked_message("m2", cte="base64")
    assert b"/t/o/" not in data, "the pixel is only visible once the part is decoded"
    tracked = tracked_messages.find_tracking(data)
    assert tracked is not None and tracked.token == mint_token("m2", "alice@gmail.test")


def test_a_base_url_with_a_path_prefix_and_entities_in_attributes_still_match() -> None:
    token = mint_token("m3")
    message = EmailMessage()
    message.set_content(f'<p><img src="https://mail.example/trk/t/o/{token}.gif?a=1&amp;b=2">'
                        "</p>", subtype="html")
    tracked = tracked_messages.find_tracking(bytes(message))
    assert tracked is not None
    assert tracked.pixel == f"https://mail.example/trk/t/o/{token}.gif?a=1&b=2"


def html_only(body: str, *, attachment: bool = False) -> bytes:
    message = EmailMessage()
    message.set_content("plain text")
    message.add_attachment(body, subtype="html", disposition="attachment" if attachment
                           else "inline")
    return bytes(message)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (tracked_message("n1", pixel=False), "tracked links but no pixel (opens off)"),
        (b"Subject: plain\r\n\r\nhttps://track.test/t/o/abc.def.gif\r\n",
         "a pixel URL in plain text is not an image"),
        (html_only(f'<img src="https://track.test/t/o/{mint_token("n3")}.gif">',
                   attachment=True), "an HTML attachment is not the message body"),
        (html_only('<img src="https://track.test/t/o/notatoken.gif">'),
         "a /t/o/ path without a token"),
        (html_only(f'<img src="ftp://track.test/t/o/{mint_token("n5")}.gif">'),
         "not http(s)"),
        (html_only(f'<!-- <img src="https://track.test/t/o/{mint_token("n6")}.gif"> -->'),
         "inside an HTML comment"),
    ],
)
def test_messages_without_a_pixel_in_their_html_body_are_not_tracked(data: bytes,
                                                                      why: str) -> None:
    assert tracked_messages.find_tracking(data) is None, why


def test_a_pixel_inside_an_attached_message_is_not_this_messages_pixel() -> None:
    outer = EmailMessage()
    outer["Subject"] = "Fwd"
    outer.set_content("see attached")
    inner = EmailMessage()
    inner.set_content(f'<img src="https://track.test/t/o/{mint_token("inner")}.gif">',
                      subtype="html")
    outer.add_attachment(inner)
    assert tracked_messages.find_tracking(bytes(outer)) is None


def test_token_claims_name_the_message_and_recipient_without_verifying() -> None:
    assert tracked_messages.token_claims(mint_token("abc.42", "bob@yahoo.test")) == (
        "abc.42", "bob@yahoo.test")
    assert tracked_messages.token_claims(mint_token("abc.43")) == ("abc.43", None)
    assert tracked_messages.token_claims("!!!.sig") == (None, None)
    assert tracked_messages.token_claims("WzFd.sig") == (None, None)  # a JSON list


# --------------------------------------------------------------------------- deciding

SHARES = EngagementSettings(open_share=0.4, proxy_share=0.25, click_share=0.1, seed="demo")
KEYS = [engagement.copy_key(mint_token(f"m{i}"), f"user{i}@gmail.test") for i in range(4000)]
LINKS = ("https://track.test/t/c/a.1", "https://track.test/t/c/b.2", "https://track.test/t/c/c.3")


def test_decisions_are_the_same_for_the_same_seed_and_copy_and_change_with_the_seed() -> None:
    first = [engagement.decide(SHARES, key, LINKS) for key in KEYS[:300]]
    again = [engagement.decide(SHARES, key, LINKS) for key in KEYS[:300]]
    other = EngagementSettings(open_share=0.4, proxy_share=0.25, click_share=0.1, seed="other")
    reseeded = [engagement.decide(other, key, LINKS) for key in KEYS[:300]]
    assert first == again
    assert [d.open for d in first] != [d.open for d in reseeded]


def test_over_many_copies_the_shares_hold() -> None:
    decisions = [engagement.decide(SHARES, key, LINKS) for key in KEYS]
    opens = [d for d in decisions if d.open]
    assert len(opens) / len(KEYS) == pytest.approx(0.4, abs=0.03)
    assert sum(d.machine for d in opens) / len(opens) == pytest.approx(0.25, abs=0.04)
    assert sum(d.click is not None for d in decisions) / len(KEYS) == pytest.approx(0.1, abs=0.02)
    assert not any(d.machine and not d.open for d in decisions)
    assert {d.click for d in decisions if d.click} == set(LINKS), "every link gets clicks"


def test_no_links_no_click_and_shares_at_the_bounds() -> None:
    always = EngagementSettings(open_share=1.0, proxy_share=1.0, click_share=1.0)
    never = EngagementSettings(open_share=0.0, proxy_share=0.0, click_share=0.0)
    for key in KEYS[:200]:
        assert engagement.decide(always, key, ()).click is None
        decision = engagement.decide(always, key, LINKS)
        assert decision.open and decision.machine and decision.click in LINKS
        assert engagement.decide(never, key, LINKS).open is False
        assert engagement.decide(never, key, LINKS).click is None


def test_a_proxy_fetches_at_once_a_reader_later_and_the_click_after_reading() -> None:
    settings = EngagementSettings(open_share=1.0, proxy_share=0.5, click_share=1.0,
                                  human_delay_s=2.0, click_delay_s=1.0)
    for key in KEYS[:200]:
        decision = engagement.decide(settings, key, LINKS)
        if decision.machine:
            assert decision.open_after_s == 0.0
        else:
            assert 1.0 <= decision.open_after_s < 3.0
            assert decision.click_after_s > decision.open_after_s
        assert decision.click_after_s >= 1.0 + 0.5


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"open_share": 1.5}, "open_share"), ({"proxy_share": -0.1}, "proxy_share"),
     ({"click_share": 2.0}, "click_share"), ({"human_delay_s": -1.0}, "human_delay_s")],
)
def test_settings_out_of_range_are_refused(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EngagementSettings(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "scheme", "ca", "message"),
    [("10.0.0.5", "http", None, "127.0.0.0/8"), ("0.0.0.0", "http", None, "127.0.0.0/8"),
     ("::1", "http", None, "127.0.0.0/8"), ("127.0.0.9", "https", None, "CA"),
     ("127.0.0.9", "gopher", None, "scheme")],
)
def test_endpoints_off_loopback_or_https_without_a_ca_are_refused(
    address: str, scheme: str, ca: bytes | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Endpoint(address, 443, scheme, ca)  # type: ignore[arg-type]


def test_route_connects_to_the_mapped_address_and_keeps_the_host_and_path() -> None:
    endpoints = {"track.test": Endpoint("127.0.0.23", 8443, "https", b"ca")}
    routed = engagement.route("https://Track.Test:9999/x/t/o/a.b.gif?q=1", endpoints)
    assert routed is not None
    endpoint, target, host = routed
    assert endpoint is endpoints["track.test"]
    assert target == "https://127.0.0.23:8443/x/t/o/a.b.gif?q=1"
    assert host == "track.test:9999"
    assert engagement.route("https://evil.example/t/o/a.b.gif", endpoints) is None
    assert engagement.route("https://track.test.evil.example/t/o/a.b.gif", endpoints) is None
    assert engagement.route("ftp://track.test/t/o/a.b.gif", endpoints) is None


# --------------------------------------------------------------------------- simulating


async def test_only_copies_with_a_pixel_are_considered_and_readers_do_what_was_decided() -> None:
    settings = EngagementSettings(open_share=0.6, proxy_share=0.3, click_share=0.3,
                                  seed="unit", **INSTANT)
    fetcher = RecordingFetcher()
    async with engagement.Engagement(settings, ENDPOINTS, fetcher=fetcher) as simulator:
        for i in range(60):
            simulator.observe(received(tracked_message(f"m{i}", to=f"u{i}@gmail.test"),
                                       f"u{i}@gmail.test"))
            simulator.observe(received(tracked_message(f"plain{i}", pixel=False)))
        await simulator.settle()
    assert len(simulator.records) == 60
    expected = {"opens": 0, "machine_opens": 0, "clicks": 0, "failed": 0}
    agents: list[str] = []
    for record in simulator.records:
        tracked = tracked_messages.find_tracking(
            tracked_message(record.tracked_message or "", to=record.recipient))
        assert tracked is not None
        decision = engagement.decide(settings, engagement.copy_key(record.token,
                                                                   record.recipient),
                                     tracked.links)
        assert record.decision == decision
        if decision.open:
            expected["machine_opens" if decision.machine else "opens"] += 1
            agents.append(settings.proxy_user_agent if decision.machine
                          else settings.human_user_agent)
        if decision.click:
            expected["clicks"] += 1
            agents.append(settings.human_user_agent)
    assert simulator.simulated() == expected
    assert expected["opens"] and expected["machine_opens"] and expected["clicks"]
    assert sorted(call[3] for call in fetcher.calls) == sorted(agents)
    assert not any("plain" in call[0] for call in fetcher.calls)
    clicked = [f for r in simulator.records for f in r.fetches if f.kind == "click"]
    assert all(f.location == "https://shop.example/spring" for f in clicked)


async def test_a_url_on_a_host_outside_the_map_is_refused_never_fetched() -> None:
    settings = EngagementSettings(open_share=1.0, click_share=1.0, **INSTANT)
    fetcher = RecordingFetcher()
    async with engagement.Engagement(settings, ENDPOINTS, fetcher=fetcher) as simulator:
        simulator.observe(received(tracked_message("far", base="https://track.elsewhere.example")))
        await simulator.settle()
    assert fetcher.calls == []
    [record] = simulator.records
    assert [(f.kind, f.status, f.error) for f in record.fetches] == [
        ("open", None, "refused: host not mapped"), ("click", None, "refused: host not mapped")]
    assert simulator.simulated() == {"opens": 0, "machine_opens": 0, "clicks": 0, "failed": 2}


async def test_a_404_or_no_answer_is_a_failure_not_an_open() -> None:
    settings = EngagementSettings(open_share=1.0, proxy_share=0.0, click_share=1.0, **INSTANT)
    gone = mint_token("gone", "alice@gmail.test")
    fetcher = RecordingFetcher({gone: 404, "/t/c/": ConnectionRefusedError(111, "refused")})
    async with engagement.Engagement(settings, ENDPOINTS, fetcher=fetcher) as simulator:
        simulator.observe(received(tracked_message("gone")))
        await simulator.settle()
    [record] = simulator.records
    assert [(f.kind, f.status, f.ok) for f in record.fetches] == [
        ("open", 404, False), ("click", None, False)]
    assert "ConnectionRefusedError" in (record.fetches[1].error or "")
    assert simulator.simulated() == {"opens": 0, "machine_opens": 0, "clicks": 0, "failed": 2}
    assert simulator.implied_events() == {"opened": [], "clicked": []}


async def test_each_recipient_reads_for_themselves_and_events_are_named_by_the_token() -> None:
    settings = EngagementSettings(open_share=1.0, click_share=0.0, seed="r", **INSTANT)
    fetcher = RecordingFetcher()
    async with engagement.Engagement(settings, ENDPOINTS, fetcher=fetcher) as simulator:
        simulator.observe(received(tracked_message("multi", to="alice@gmail.test"),
                                   "alice@gmail.test", "bob@gmail.test"))
        await simulator.settle()
    assert [r.recipient for r in simulator.records] == ["alice@gmail.test", "bob@gmail.test"]
    assert simulator.implied_events()["opened"] == [("multi", "alice@gmail.test")] * 2
    assert simulator.details()[0]["fetches"][0]["ok"] is True
    assert engagement.total([simulator, simulator])["opens"] == 4
