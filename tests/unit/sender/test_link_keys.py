"""Link keys: their own Secret, a list, rotation without breaking links already sent.

The finding: the admin token was the root of the unsubscribe and trace keys (derived from it
when no key files were given), so rotating it broke every unsubscribe link, trace header and
VERP address already out there. Now the keys are a list in the pool's `-links` Secret: the
newest key whose start has come seals, every listed key verifies, a key removed is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mailfleet_sender import (
    clock,
    config,
    deliverability,
    feedback,
    hooks,
    link_keys,
    metrics,
    reports,
    spool,
)
from sandbox_fixtures.sender import write_secret_volume

NOW = 1_750_000_000.0
OLD, NEW = "old-link-key-0123456789abcdef", "new-link-key-fedcba9876543210"
RCPT = "reader@gmail.test"
ORIGINAL = b"From: news@example.test\r\nTo: reader@gmail.test\r\nSubject: hi\r\n\r\nbody\r\n"


class Wall:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture
def links(tmp_path: Path) -> Path:
    return write_secret_volume(tmp_path / "links", {"key-1700000000": OLD + "\n"})


@pytest.fixture
def layer(tmp_path: Path, links: Path, wall: Wall) -> Iterator[deliverability.Deliverability]:
    cfg = config.parse_config(
        f"spoolDir: {tmp_path / 'spool'}\npool: news\n"
        "deliverability:\n  bounceDomain: bounces.example.test\n"
        "  unsubscribeBaseUrl: https://u.example.test\n"
        f"  linkKeyDir: {links}\n"
    )
    store = spool.Spool.open(tmp_path / "spool")
    store.start()
    made = deliverability.Deliverability(
        cfg=cfg, keys=deliverability.load_keys(cfg, spool_dir=tmp_path / "spool"),
        node_id="news-0", spool_=store, clock_=clock.Clock(wall=wall),
        metric_set=metrics.Metrics(), suppression_path=tmp_path / "s.sqlite3",
    )
    yield made
    made.close()
    store.close()


def _context(recipient: str = RCPT) -> hooks.PrepareContext:
    return hooks.PrepareContext(recipient, "news@example.test", "marketing", True, "7",
                                "192.0.2.1", 1)


def _sealed(layer: deliverability.Deliverability, recipient: str = RCPT) -> tuple[str, str, str]:
    """(unsubscribe token, trace header value, VERP return path) of one marketing copy."""
    context = _context(recipient)
    prepared = layer.prepare(ORIGINAL, context)
    header = prepared.split(b"\r\n", 1)[0].decode()
    token = header.split("/v1/unsubscribe/", 1)[1].split(">", 1)[0]
    stamped = layer.stamp(prepared, context).split(b"\r\n", 1)[0].decode()
    verp = layer.return_path(context)
    assert verp is not None
    return token, stamped.partition(": ")[2], verp


def _rotate(links: Path, files: dict[str, str], layer: deliverability.Deliverability) -> None:
    write_secret_volume(links, files)
    assert layer.keys.refresh()


def test_a_link_sealed_before_a_rotation_still_unsubscribes_after_it(
    layer: deliverability.Deliverability, links: Path, wall: Wall
) -> None:
    before, trace_before, verp_before = _sealed(layer)
    _rotate(links, {"key-1700000000": OLD, f"key-{int(NOW) - 60}": NEW}, layer)
    after, trace_after, _ = _sealed(layer, "other@gmail.test")
    # New links are sealed with the new key only ...
    with pytest.raises(reports.ReportError):
        reports.decode_trace(trace_after, OLD.encode())
    assert reports.decode_trace(trace_after, NEW.encode()).recipient == "other@gmail.test"
    # ... and what was sealed before still verifies: unsubscribe, trace and VERP.
    assert layer.unsubscribe(before, via="one-click").result == "recorded"
    assert layer.unsubscribe(after, via="one-click").result == "recorded"
    marks = layer.marks
    assert reports.decode_trace(trace_before, list(marks.trace_keys)).recipient == RCPT
    tag = reports.decode_verp(verp_before)
    assert any(tag.matches(RCPT, key) for key in marks.trace_keys)
    assert isinstance(marks, feedback.Marks)


def test_a_removed_keys_links_are_refused(
    layer: deliverability.Deliverability, links: Path
) -> None:
    token, trace, _ = _sealed(layer)
    _rotate(links, {f"key-{int(NOW) - 60}": NEW}, layer)
    result = layer.unsubscribe(token, via="one-click")
    assert (result.status, result.result) == (400, "forged_token")
    with pytest.raises(reports.ReportError):
        reports.decode_trace(trace, list(layer.marks.trace_keys))


def test_a_key_added_ahead_of_time_verifies_at_once_and_seals_only_from_its_start(
    layer: deliverability.Deliverability, links: Path, wall: Wall
) -> None:
    """Pods see a Secret change at different moments: a key that starts a few minutes ahead is
    on every pod before any pod seals with it."""
    start = int(NOW) + 300
    _rotate(links, {"key-1700000000": OLD, f"key-{start}": NEW}, layer)
    _, trace, _ = _sealed(layer)
    assert reports.decode_trace(trace, OLD.encode()).recipient == RCPT
    sealed_elsewhere = reports.encode_trace(
        reports.Trace("news_1.9", RCPT, "marketing", "192.0.2.1"), NEW.encode())
    assert reports.decode_trace(sealed_elsewhere, list(layer.marks.trace_keys))
    wall.now = start
    _, trace, _ = _sealed(layer)
    assert reports.decode_trace(trace, NEW.encode()).recipient == RCPT


def test_unusable_key_files_keep_the_last_good_keys(
    layer: deliverability.Deliverability, links: Path
) -> None:
    token, _, _ = _sealed(layer)
    write_secret_volume(links, {"key-1800000000": "short"})
    assert not layer.keys.refresh()
    assert layer.keys.error is not None and "shorter than 16 bytes" in layer.keys.error
    assert "short" not in layer.keys.error.replace("shorter", "")  # never the key itself
    assert layer.unsubscribe(token, via="one-click").result == "recorded"


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ({}, "no key-<unix seconds> file"),
        ({"key-1700000000": "too-short"}, "shorter than 16 bytes"),
        ({"README": "x" * 40}, "no key-<unix seconds> file"),
    ],
    ids=["an empty links Secret is refused",
         "a key under 16 bytes is refused",
         "files not named key-<ts> are not keys"],
)
def test_a_link_key_dir_without_a_usable_key_fails_the_config(
    tmp_path: Path, files: dict[str, str], why: str
) -> None:
    directory = write_secret_volume(tmp_path / "links", files)
    cfg = config.parse_config(f"deliverability: {{linkKeyDir: {directory}}}\n")
    with pytest.raises(config.ConfigError, match=why):
        deliverability.load_keys(cfg, spool_dir=tmp_path)


@pytest.mark.parametrize(
    "deliverability_yaml",
    [
        "{peers: {service: p.ns.svc}, peerTokenFile: /t}",
        "{peers: {urls: ['http://127.0.0.2:8080']}, linkKeyDir: /l}",
    ],
    ids=["a pool without link keys is refused (nothing derived from the admin token)",
         "a pool without a peer token is refused (the admin token is not lent to peers)"],
)
def test_a_pool_config_without_its_keys_is_refused(deliverability_yaml: str) -> None:
    with pytest.raises(config.ConfigError, match="required with peers"):
        config.parse_config(f"adminTokenFile: /a\ndeliverability: {deliverability_yaml}\n")


def test_keys_do_not_depend_on_the_admin_token(tmp_path: Path, links: Path) -> None:
    """Two pods, different admin token files, one links Secret: the same keys."""
    keys = []
    for admin in ("first-admin-token", "rotated-admin-token"):
        (tmp_path / "admin").write_text(admin)
        cfg = config.parse_config(
            f"adminTokenFile: {tmp_path / 'admin'}\ndeliverability: {{linkKeyDir: {links}}}\n")
        keys.append(deliverability.load_keys(cfg, spool_dir=tmp_path).verifying)
    assert keys[0] == keys[1] == (OLD.encode(),)


def test_peer_tokens_send_the_first_line_and_accept_every_line(tmp_path: Path) -> None:
    token_file = tmp_path / "peers" / "token"
    write_secret_volume(tmp_path / "peers", {"token": "old-peer\n"})
    keys = link_keys.PoolKeys([link_keys.LinkKey("key-1", 1, OLD.encode())],
                              link_keys.read_peer_tokens(token_file),
                              peer_token_file=str(token_file))
    assert keys.peer_token == "old-peer"
    write_secret_volume(tmp_path / "peers", {"token": "new-peer\nold-peer\n"})
    assert keys.refresh()
    assert (keys.peer_token, keys.peer_tokens) == ("new-peer", ("new-peer", "old-peer"))


@pytest.mark.parametrize(
    ("starts", "now", "sealing"),
    [
        ((100, 200), 250, 200),
        ((100, 200), 150, 100),
        ((300, 200), 100, 200),
    ],
    ids=["the newest key whose start has come seals",
         "a key that starts later does not seal yet",
         "when every key starts later, the earliest seals"],
)
def test_which_key_seals(starts: tuple[int, ...], now: float, sealing: int) -> None:
    keys = [link_keys.LinkKey(f"key-{s}", s, b"k" * 16) for s in starts]
    assert link_keys.sealing_key(keys, now).since == sealing
