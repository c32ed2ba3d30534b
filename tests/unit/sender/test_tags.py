"""Tags at submission: the header and JSON forms, and what is refused (never dropped)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailfleet_sender import envelopes, messages, tags


@pytest.mark.parametrize(("header", "expected"), [
    ("campaign=spring; segment=vip", {"campaign": "spring", "segment": "vip"}),
    ("campaign=spring;", {"campaign": "spring"}),
    ("  campaign = spring  ;segment=vip gold", {"campaign": "spring", "segment": "vip gold"}),
    ("url=https://x.test/?a=b", {"url": "https://x.test/?a=b"}),
    ("", {}),
])
def test_the_header_form_is_read(header: str, expected: dict[str, str]) -> None:
    assert tags.parse_header([header]) == expected


def test_several_headers_are_merged() -> None:
    assert tags.parse_header(["campaign=a", "segment=b"]) == {"campaign": "a", "segment": "b"}


@pytest.mark.parametrize(("given_tags", "problem"), [
    (["campaign"], "is not key=value"),
    (["campaign=a; campaign=b"], "given twice"),
    (["campaign=a", "campaign=b"], "given twice"),
    (["Campaign=a"], "must be 1-32 of"),
    (["_x=a"], "must be 1-32 of"),
    (["=a"], "must be 1-32 of"),
    ([f"{'k' * 33}=a"], "must be 1-32 of"),
    (["campaign="], "1-128 characters"),
    ([f"campaign={'v' * 129}"], "1-128 characters"),
    (["; ".join(f"k{i}=v" for i in range(11))], "at most 10"),
])
def test_bad_header_tags_are_refused_with_the_problem_named(given_tags: list[str],
                                                            problem: str) -> None:
    with pytest.raises(tags.TagError, match=problem):
        tags.parse_header(given_tags)


@pytest.mark.parametrize(("value", "problem"), [
    ({"campaign": 5}, "must be a string"),
    ({"campaign": "a\nb"}, "printable"),
    ({"campaign": "a\x00"}, "printable"),
])
def test_bad_json_tags_are_refused(value: dict[str, object], problem: str) -> None:
    with pytest.raises(tags.TagError, match=problem):
        tags.check(value)


def test_json_and_header_tags_merge_and_a_key_in_both_is_refused() -> None:
    assert tags.merge({"campaign": "a"}, {"segment": "b"}) == {"campaign": "a", "segment": "b"}
    with pytest.raises(tags.TagError, match="given twice"):
        tags.merge({"campaign": "a"}, {"campaign": "a"})
    with pytest.raises(tags.TagError, match="at most 10"):
        tags.merge({f"a{i}": "v" for i in range(6)}, {f"b{i}": "v" for i in range(5)})


_KEYS = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,31}", fullmatch=True)
_VALUES = st.text(st.characters(codec="ascii", categories=["L", "N", "P", "S", "Zs"],
                                exclude_characters=";"), min_size=1, max_size=128).filter(
    lambda v: v == v.strip())


@given(st.dictionaries(_KEYS, _VALUES, max_size=10))
def test_valid_tags_survive_the_header_and_the_stored_form(given_tags: dict[str, str]) -> None:
    header = "; ".join(f"{k}={v}" for k, v in given_tags.items())
    assert tags.parse_header([header]) == given_tags
    assert tags.decode(tags.encode(given_tags)) == given_tags


def test_the_header_is_read_and_removed_before_the_message_is_stored() -> None:
    data = (b"From: a@example.test\r\nX-Mailfleet-Tags: campaign=spring\r\n"
            b"Subject: s\r\n\r\nbody\r\n")
    accepted = messages.check_message(data, limits=messages.Limits(), now=0.0,
                                      hostname="h.test")
    assert isinstance(accepted, messages.Accepted)
    assert accepted.tags_header == ("campaign=spring",)
    assert b"mailfleet" not in accepted.data.lower()


def test_a_hand_off_carries_the_tags_to_the_next_pod() -> None:
    envelope = envelopes.Envelope("a@x.test", ("b@y.test",), "marketing", None,
                                  {"campaign": "spring"})
    decoded, data = envelopes.decode(envelopes.encode(envelope, b"msg"), max_envelope=10_000)
    assert decoded == envelope and data == b"msg"
    plain = envelopes.Envelope("a@x.test", ("b@y.test",), None, None)
    assert b"tags" not in envelopes.encode(plain, b"m")  # an older peer reads it as before
    with pytest.raises(envelopes.BadEnvelope, match="tags"):
        envelopes.decode(b'{"from":"a@x.test","to":[],"tags":[1]}\nm', max_envelope=1000)


def test_stored_garbage_reads_as_no_tags() -> None:
    assert tags.decode(None) == {} and tags.decode("[1]") == {} and tags.decode("{") == {}
