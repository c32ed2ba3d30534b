"""Tracking at run time, without sockets: which classes are rewritten (none unless asked),
what tokens name, how machine fetches are told apart, the event's shape, the key file, and
the config rules."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from mailfleet_sender import config, hooks, metrics, tracking, tracking_config, tracking_tokens

KEY = "tracking-key-0123456789abcdef"
HTML_MAIL = (
    b"From: news@shop.example\r\nTo: a@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    b"<html><body><a href=\"https://shop.example/p\">p</a></body></html>\r\n"
)
BROWSER = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
           "(KHTML, like Gecko) Version/17.0 Safari/605.1.15")


class ListSink:
    def __init__(self) -> None:
        self.events: list[Mapping[str, object]] = []

    def record(self, event: Mapping[str, object]) -> None:
        self.events.append(event)


def _config(tmp_path: Path, **tracking_section: Any) -> config.SenderConfig:
    (tmp_path / "key").write_text(KEY + "\n")
    return config.SenderConfig.model_validate({
        "spoolDir": str(tmp_path / "spool"),
        "classes": [
            {"name": "transactional", "priority": 100},
            {"name": "marketing", "bulk": True, "tracking": {"opens": True, "clicks": True}},
            {"name": "newsletter", "bulk": True},
        ],
        "tracking": {"host": "track.example.com", "keyFile": str(tmp_path / "key"),
                     **tracking_section},
    })


def _tracker(cfg: config.SenderConfig, now: float = 1_700_000_000.0) -> tracking.Tracker:
    return tracking.Tracker(cfg=cfg, metric_set=metrics.Metrics(), wall=lambda: now,
                            sink=ListSink())


def _tokens(data: bytes, kind: str) -> list[tracking_tokens.Claims]:
    found = re.findall(rb"/t/" + kind.encode() + rb"/([A-Za-z0-9_.-]+?)(?:\.gif)?\"", data)
    claims = [tracking_tokens.verify(t.decode(), [KEY.encode()]) for t in found]
    assert all(c is not None for c in claims)
    return [c for c in claims if c is not None]


@pytest.mark.parametrize("klass", ["transactional", "newsletter", "unknown"])
async def test_a_class_that_does_not_ask_is_never_rewritten(tmp_path: Path, klass: str) -> None:
    tracker = _tracker(_config(tmp_path))
    assert not tracker.tracks(klass)
    out = await tracker.rewrite(HTML_MAIL, message_id="7", class_name=klass,
                                recipients=["a@example.org"], tags={})
    assert out is HTML_MAIL


def test_the_default_classes_track_nothing() -> None:
    assert not any(c.tracking.on for c in config.SenderConfig().classes)


async def test_a_tracked_message_names_its_id_class_tags_and_only_recipient(
    tmp_path: Path,
) -> None:
    tracker = _tracker(_config(tmp_path))
    out = await tracker.rewrite(HTML_MAIL, message_id="7", class_name="marketing",
                                recipients=["a@example.org"], tags={"campaign": "spring"})
    [click] = _tokens(out, "c")
    [pixel] = _tokens(out, "o")
    assert (click.message_id, click.recipient, click.url, click.class_name, dict(click.tags),
            click.issued) == ("7", "a@example.org", "https://shop.example/p", "marketing",
                              {"campaign": "spring"}, 1_700_000_000)
    assert (pixel.message_id, pixel.recipient, pixel.url) == ("7", "a@example.org", None)
    assert b"https://track.example.com/t/c/" in out


async def test_a_message_to_several_recipients_names_none(tmp_path: Path) -> None:
    tracker = _tracker(_config(tmp_path))
    out = await tracker.rewrite(HTML_MAIL, message_id="8", class_name="marketing",
                                recipients=["a@example.org", "b@example.org"], tags={})
    assert [c.recipient for c in _tokens(out, "c") + _tokens(out, "o")] == [None, None]


async def test_a_message_that_cannot_be_parsed_goes_untracked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = _tracker(_config(tmp_path))

    def broken(data: bytes, plan: object) -> object:
        raise RuntimeError("parser bug")

    monkeypatch.setattr(tracking.tracking_rewrite, "rewrite_message", broken)
    out = await tracker.rewrite(HTML_MAIL, message_id="9", class_name="marketing",
                                recipients=["a@example.org"], tags={})
    assert out is HTML_MAIL
    assert tracker.rewrite_failures._value.get() == 1


@pytest.mark.parametrize(
    ("agent", "head", "since", "window", "machine"),
    [
        ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com "
         "GoogleImageProxy)", False, None, 0, True),
        ("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", False,
         None, 0, True),
        ("Mozilla/5.0", False, None, 0, True),
        ("Barracuda Sentinel (EE)", False, None, 0, True),
        ("Mozilla/5.0 (compatible; MSIE 9.0) mimecast", False, None, 0, True),
        ("Proofpoint URL Defense", False, None, 0, True),
        (None, False, None, 0, True),
        ("", False, None, 0, True),
        (BROWSER, True, None, 0, True),
        (BROWSER, False, None, 3, False),
        (BROWSER, False, 999.0, 3, True),
        (BROWSER, False, 990.0, 3, False),
        (BROWSER, False, 1001.0, 3, True),
        (BROWSER, False, 999.0, 0, False),
    ],
    ids=[
        "Gmail's image proxy", "Yahoo's proxy", "Apple Mail Privacy Protection",
        "a Barracuda scanner", "a Mimecast scanner (any case)", "a Proofpoint scanner",
        "no User-Agent", "an empty User-Agent", "a HEAD request",
        "a browser with nothing known", "a browser one second after delivery",
        "a browser ten seconds after delivery", "a browser before delivery (clock skew)",
        "a browser soon after delivery with the window off",
    ],
)
def test_machine_fetches_are_told_apart(
    agent: str | None, head: bool, since: float | None, window: float, machine: bool
) -> None:
    patterns = tracking.compile_patterns(tracking_config.DEFAULT_MACHINE_USER_AGENTS)
    assert tracking.is_machine(agent, patterns, head=head, now=1000.0, since=since,
                               window=window) is machine


def test_an_event_has_the_contract_shape() -> None:
    claims = tracking_tokens.Claims(message_id="7", recipient="a@example.org",
                                    url="https://shop.example/p", kind=tracking_tokens.CLICK,
                                    class_name="marketing", tags={"campaign": "spring"})
    event = tracking.build_event(claims, now=1_700_000_000.25, machine=False, pool="news",
                                 namespace="mail", ip="192.0.2.1", provider="gmail")
    assert set(event) == {
        "schema", "id", "type", "time", "message_id", "recipient", "pool", "namespace",
        "class", "ip", "provider", "tags", "reply", "bounce", "url", "machine", "delay_s",
        "attempt",
    }
    assert {k: v for k, v in event.items() if k != "id"} == {
        "schema": "mailfleet.io/event/v1", "type": "clicked", "time": "2023-11-14T22:13:20.250Z",
        "message_id": "7", "recipient": "a@example.org", "pool": "news", "namespace": "mail",
        "class": "marketing", "ip": "192.0.2.1", "provider": "gmail",
        "tags": {"campaign": "spring"}, "reply": None, "bounce": None,
        "url": "https://shop.example/p", "machine": False, "delay_s": None, "attempt": None,
    }
    assert isinstance(event["id"], str) and len(event["id"]) == 32


def test_a_delivery_this_pod_made_names_its_ip_and_provider(tmp_path: Path) -> None:
    tracker = _tracker(_config(tmp_path))
    tracker.observe(hooks.Outcome(
        delivery_id=1, recipient="A@example.org", domain="example.org", class_name="marketing",
        source_ip="192.0.2.1", provider="gmail", verdict=hooks.Verdict.DELIVERED, reply=None,
        classification=None, attempts=1, message=7,
    ))
    for recipient in ("a@example.org", None):
        claims = tracking_tokens.Claims(message_id="7", recipient=recipient, url=None,
                                        kind=tracking_tokens.OPEN)
        seen = tracker._delivery(claims)
        assert seen is not None and (seen.ip, seen.provider) == ("192.0.2.1", "gmail")


def test_the_location_header_is_percent_encoded_where_it_must_be() -> None:
    assert tracking.location("https://a.example/p?q=1&r=%20#f") == (
        "https://a.example/p?q=1&r=%20#f"
    )
    assert tracking.location("https://a.example/été") == "https://a.example/%C3%A9t%C3%A9"


def test_the_key_file_holds_one_key_per_line_each_long_enough(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(f"{KEY}\n\n{KEY}-old\n")
    assert tracking.read_keys(path) == (KEY.encode(), f"{KEY}-old".encode())
    for bad in ("", "\n\n", "short\n", f"{KEY}\nshort\n"):
        path.write_text(bad)
        with pytest.raises(tracking.TrackingKeyError) as raised:
            tracking.read_keys(path)
        assert KEY not in str(raised.value)
    with pytest.raises(tracking.TrackingKeyError, match="cannot read"):
        tracking.read_keys(tmp_path / "missing")


def test_an_unusable_key_file_refuses_to_start(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    (tmp_path / "key").write_text("short\n")
    with pytest.raises(config.ConfigError, match="tracking"):
        _tracker(cfg)


def test_a_lone_pod_without_key_file_signs_with_its_own_kept_key(tmp_path: Path) -> None:
    cfg = _config(tmp_path).model_copy(update={
        "tracking": tracking_config.Tracking(host="track.example.com"),
    })
    first = _tracker(cfg).keys
    assert len(first) == 1 and len(first[0]) >= 32
    assert _tracker(cfg).keys == first  # the same after a restart
    assert (Path(cfg.spool_dir) / tracking.LOCAL_KEY_FILE).stat().st_mode & 0o077 == 0


def test_a_pod_that_tracks_nothing_makes_no_key() -> None:
    cfg = config.SenderConfig(spool_dir="/nonexistent/never-created")
    assert _tracker(cfg).keys == ()


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"classes": [{"name": "m", "tracking": {"opens": True}}]}, "tracking.host"),
        ({"classes": [{"name": "m", "tracking": {"clicks": True}}],
          "tracking": {"host": "t.example"},
          "deliverability": {"peers": {"urls": ["http://127.0.0.2:1"]},
                             "linkKeyDir": "/k", "peerTokenFile": "/p"}},
         "tracking.keyFile required with peers"),
        ({"tracking": {"baseUrl": "http://track.example.com"}}, "https"),
        ({"tracking": {"baseUrl": "https://track.example.com/prefix"}}, "scheme://host"),
        ({"tracking": {"baseUrl": "https://user@track.example.com"}}, "user"),
        ({"tracking": {"host": "not a host"}}, "host name"),
        ({"tracking": {"machineUserAgents": ["(unclosed"]}}, "regular expression"),
        ({"tracking": {"tlsCertFile": "/c"}}, "together"),
        ({"classes": [{"name": "m", "tracking": {"pixel": True}}]}, "pixel"),
    ],
    ids=[
        "a tracked class without host", "pods of a pool without a shared key",
        "plain http off loopback", "a base URL with a path", "a base URL with user info",
        "a host that is not a name", "a pattern that does not compile",
        "a certificate without its key", "an unknown switch",
    ],
)
def test_tracking_config_mistakes_are_refused_with_their_path(
    section: dict[str, Any], problem: str
) -> None:
    with pytest.raises(config.ConfigError, match=re.escape(problem)):
        config.parse_config(yaml.safe_dump(section))


def test_the_base_url_defaults_to_https_on_the_host() -> None:
    t = tracking_config.Tracking(host="Track.Example.COM.")
    assert t.base == "https://track.example.com"
    assert tracking_config.Tracking(base_url="http://127.0.0.5:8082/").base == (
        "http://127.0.0.5:8082"
    )
    assert tracking_config.Tracking().base is None


def test_the_config_example_in_the_docs_is_accepted() -> None:
    text = (Path(__file__).resolve().parents[3] / "docs" / "tracking.md").read_text()
    block = re.search(r"## Turning it on and off.*?```yaml\n(.*?)```", text, re.DOTALL)
    assert block is not None
    cfg = config.parse_config(block.group(1))
    assert [c.name for c in cfg.classes if c.tracking.on] == ["marketing"]
    assert cfg.tracking.base == "https://track.example.com"
