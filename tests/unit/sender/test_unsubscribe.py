"""One-click unsubscribe tokens and headers: valid ones opt out once, forged ones change nothing."""

from __future__ import annotations

import base64
import pathlib
import urllib.parse

import pytest
from mailfleet_sender import unsubscribe

KEY = b"s" * 32
OLD_KEY = b"r" * 32
NOW = 1_700_000_000.0


def _token(**overrides: object) -> str:
    args: dict[str, object] = {"recipient": "Jane@Example.org", "list_id": "pool-a/marketing",
                               "key": KEY, "now": NOW}
    args.update(overrides)
    return unsubscribe.issue_token(**args)  # type: ignore[arg-type]


def test_a_valid_token_names_recipient_and_list() -> None:
    verified = unsubscribe.verify_token(_token(), KEY, now=NOW + 10)
    assert verified.recipient == "Jane@Example.org"
    assert verified.list_id == "pool-a/marketing"
    assert verified.issued_at == NOW
    assert not verified.replayed


def test_the_token_does_not_show_the_address() -> None:
    token = _token()
    assert b"Jane" not in base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert _token() != _token()  # fresh nonce each time


def _flip(token: str) -> str:
    middle = len(token) // 2
    return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1:]


@pytest.mark.parametrize(
    ("token", "error"),
    [
        (_flip(_token()), unsubscribe.ForgedToken),
        (_token(key=b"x" * 32), unsubscribe.ForgedToken),
        ("not-a-token", unsubscribe.ForgedToken),
        ("%%%%", unsubscribe.ForgedToken),
        ("", unsubscribe.ForgedToken),
        (_token(now=NOW - unsubscribe.DEFAULT_MAX_AGE - 1), unsubscribe.ExpiredToken),
        (_token(now=NOW + 3600), unsubscribe.ExpiredToken),
    ],
    ids=[
        "an edited token is forged",
        "a token made with another key is forged",
        "a short string is not a token",
        "a string that is not base64url is not a token",
        "an empty token is not a token",
        "a token older than the maximum age has expired",
        "a token issued an hour in the future is refused",
    ],
)
def test_bad_tokens_are_refused(token: str, error: type[unsubscribe.UnsubscribeError]) -> None:
    used = unsubscribe.MemoryUsedTokens()
    with pytest.raises(error):
        unsubscribe.verify_token(token, KEY, used, now=NOW)
    assert isinstance(error.reason, str)


def test_a_token_made_before_a_key_rotation_still_verifies() -> None:
    token = _token(key=OLD_KEY)
    assert unsubscribe.verify_token(token, [KEY, OLD_KEY], now=NOW).recipient == "Jane@Example.org"


def test_a_used_token_is_a_replay_the_second_time() -> None:
    used = unsubscribe.MemoryUsedTokens()
    token = _token()
    first = unsubscribe.verify_token(token, KEY, used, now=NOW)
    second = unsubscribe.verify_token(token, KEY, used, now=NOW + 1)
    assert (first.replayed, second.replayed) == (False, True)
    assert unsubscribe.should_record(first, currently_suppressed=False, last_removed_at=None)
    assert not unsubscribe.should_record(second, currently_suppressed=False, last_removed_at=None)


def test_the_used_store_forgets_the_oldest_nonces_first() -> None:
    used = unsubscribe.MemoryUsedTokens(capacity=2)
    assert used.mark_used("a", NOW) and used.mark_used("b", NOW) and used.mark_used("c", NOW)
    assert used.mark_used("a", NOW)
    assert not used.mark_used("c", NOW)


@pytest.mark.parametrize(
    ("suppressed", "removed_at", "expected"),
    [
        (False, None, True),
        (True, None, False),
        (False, NOW + 100, False),
        (False, NOW - 100, True),
    ],
    ids=[
        "a first opt-out is recorded",
        "an address already suppressed records nothing new",
        "a token issued before the address was re-subscribed records nothing",
        "a token issued after an earlier removal is recorded",
    ],
)
def test_what_a_valid_token_records(
    suppressed: bool, removed_at: float | None, expected: bool
) -> None:
    token = unsubscribe.verify_token(_token(), KEY, now=NOW)
    assert (
        unsubscribe.should_record(
            token, currently_suppressed=suppressed, last_removed_at=removed_at
        )
        is expected
    )


def test_headers_follow_rfc_8058() -> None:
    headers = unsubscribe.build_unsubscribe_headers(
        "jane@example.org", "https://unsub.example.com/", "Example.com", KEY,
        list_id="pool-a/marketing", now=NOW,
    )
    names = [name for name, _ in headers]
    assert names == ["List-Unsubscribe", "List-Unsubscribe-Post"]
    assert dict(headers)["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    links = dict(headers)["List-Unsubscribe"].split(",")
    https, mailto = (part.strip().strip("<>") for part in links)
    assert https.startswith("https://unsub.example.com/v1/unsubscribe/")
    assert mailto.startswith("mailto:unsubscribe@example.com?subject=")
    token = https.rsplit("/", 1)[1]
    assert unsubscribe.verify_token(token, KEY, now=NOW).recipient == "jane@example.org"
    subject = urllib.parse.unquote(mailto.split("subject=", 1)[1])
    assert subject == f"unsubscribe {token}"
    assert all("\n" not in value for _, value in headers)


def test_a_plain_http_url_is_refused() -> None:
    with pytest.raises(ValueError, match="https"):
        unsubscribe.build_unsubscribe_headers(
            "jane@example.org", "http://unsub.example.com", "example.com", KEY, list_id="p"
        )


def test_the_key_is_read_from_a_secret_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "key").write_bytes(b"0123456789abcdef0123\n")
    assert unsubscribe.load_key(tmp_path / "key") == b"0123456789abcdef0123"
    (tmp_path / "short").write_bytes(b"tiny\n")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        unsubscribe.load_key(tmp_path / "short")
