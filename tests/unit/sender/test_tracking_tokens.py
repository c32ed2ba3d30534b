"""Tracking tokens: what a pixel or a rewritten link carries. Only tokens this pool signed
verify; anything else (forged, altered, truncated) is refused, which is what keeps the click
endpoint from ever redirecting to a URL the pool did not put in a message."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailfleet_sender import tracking_tokens as tt

KEY = b"tracking-key-0123456789abcdef"
OTHER = b"another-key-0123456789abcdefgh"
CLICK = tt.Claims(
    message_id="42", recipient="alice@example.org", url="https://shop.example/p?a=1&b=2",
    kind=tt.CLICK, class_name="marketing", tags={"campaign": "spring"}, issued=1_700_000_000,
)
OPEN = tt.Claims(message_id="42", recipient=None, url=None, kind=tt.OPEN)


def _raw_token(payload: object, key: bytes = KEY) -> str:
    """A token signed with the right key around any payload (as a key that signed something
    else would produce)."""
    body = json.dumps(payload).encode()
    mac = hmac.new(key, body, hashlib.sha256).digest()[:16]

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(body)}.{b64(mac)}"


@pytest.mark.parametrize("claims", [CLICK, OPEN], ids=["a click token", "an open token"])
def test_a_token_round_trips_to_its_claims(claims: tt.Claims) -> None:
    token = tt.sign(claims, KEY)
    assert tt.verify(token, [KEY]) == claims
    assert all(c.isalnum() or c in "-_." for c in token)  # safe in a URL path as it is


def test_the_payload_has_the_contract_members() -> None:
    payload = json.loads(base64.urlsafe_b64decode(tt.sign(OPEN, KEY).split(".")[0] + "=="))
    assert payload == {"m": "42", "r": None, "u": None, "k": "o"}


def test_a_token_signed_with_an_old_key_still_verifies_after_rotation() -> None:
    token = tt.sign(CLICK, OTHER)
    assert tt.verify(token, [KEY, OTHER]) == CLICK
    assert tt.verify(token, [KEY]) is None


def test_a_token_signed_with_another_key_is_refused() -> None:
    assert tt.verify(tt.sign(CLICK, OTHER), [KEY]) is None


@pytest.mark.parametrize(
    "alter",
    [
        lambda t: t[:-1],
        lambda t: t.split(".")[0],
        lambda t: t.split(".")[0] + ".",
        lambda t: "." + t.split(".")[1],
        lambda t: t + "A",
        lambda t: t + "=",
        lambda t: t + ".x",
        lambda t: t.replace(".", ".."),
        lambda t: "",
        lambda t: "A" * (tt.MAX_TOKEN_CHARS + 1),
    ],
    ids=[
        "the last character cut off", "the signature dropped", "an empty signature",
        "an empty payload", "a character appended", "padding appended", "a third part",
        "a doubled separator", "nothing at all", "an over-long token",
    ],
)
def test_a_truncated_or_malformed_token_is_refused(alter: object) -> None:
    assert callable(alter)
    assert tt.verify(alter(tt.sign(CLICK, KEY)), [KEY]) is None


def test_a_payload_swapped_under_another_signature_is_refused() -> None:
    other = tt.sign(tt.Claims(message_id="43", recipient=None, url="https://evil.example/",
                              kind=tt.CLICK), KEY)
    token = tt.sign(CLICK, KEY)
    swapped = f"{other.split('.')[0]}.{token.split('.')[1]}"
    assert tt.verify(swapped, [KEY]) is None


@given(st.data())
def test_any_single_character_changed_makes_the_token_invalid(data: st.DataObject) -> None:
    token = tt.sign(CLICK, KEY)
    index = data.draw(st.integers(0, len(token) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="
    char = data.draw(st.sampled_from([c for c in alphabet if c != token[index]]))
    assert tt.verify(token[:index] + char + token[index + 1:], [KEY]) is None


@pytest.mark.parametrize(
    "payload",
    [
        {"m": "1", "r": None, "u": "javascript:alert(1)", "k": "c"},
        {"m": "1", "r": None, "u": "//evil.example/", "k": "c"},
        {"m": "1", "r": None, "u": "https://", "k": "c"},
        {"m": "1", "r": None, "u": "https://a.example/\r\nSet-Cookie: x", "k": "c"},
        {"m": "1", "r": None, "u": None, "k": "c"},
        {"m": "1", "r": None, "u": "https://a.example/", "k": "o"},
        {"m": "1", "r": None, "u": None, "k": "x"},
        {"m": "", "r": None, "u": None, "k": "o"},
        {"m": 1, "r": None, "u": None, "k": "o"},
        {"m": "1", "r": 5, "u": None, "k": "o"},
        {"m": "1", "r": None, "u": None, "k": "o", "g": {"a": 1}},
        {"m": "1", "r": None, "u": None, "k": "o", "t": True},
        ["m", "1"],
    ],
    ids=[
        "a javascript URL", "a scheme-relative URL", "a URL without host",
        "a URL with a header injection", "a click without URL", "an open with a URL",
        "an unknown kind", "an empty message id", "a numeric message id",
        "a numeric recipient", "a tag that is not text", "a boolean time", "not an object",
    ],
)
def test_a_validly_signed_payload_of_the_wrong_shape_is_refused(payload: object) -> None:
    assert tt.verify(_raw_token(payload), [KEY]) is None


def test_a_short_key_or_a_click_without_url_cannot_sign() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        tt.sign(CLICK, b"short")
    with pytest.raises(ValueError, match="URL"):
        tt.sign(tt.Claims(message_id="1", recipient=None, url=None, kind=tt.CLICK), KEY)


@pytest.mark.parametrize(
    ("url", "trackable"),
    [
        ("https://shop.example/p", True),
        ("HTTP://shop.example", True),
        ("https://shop.example/ä?q=ü", True),
        ("mailto:a@example.org", False),
        ("tel:+331234", False),
        ("#top", False),
        ("/relative", False),
        ("https:/one-slash", False),
        ("https://shop.example/a b", False),
        ("https://shop.example/\t", False),
        ("ftp://files.example/", False),
    ],
)
def test_only_absolute_http_urls_without_spaces_are_trackable(url: str, trackable: bool) -> None:
    assert tt.is_trackable_url(url) is trackable
