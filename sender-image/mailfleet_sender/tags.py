"""The application's own tags on a message (campaign, segment...), given at submission and
carried by every event of the message. Pure (no I/O).

Given as the SMTP (or raw HTTP) header `X-Mailfleet-Tags: campaign=spring; segment=vip`
(removed before signing, like every `X-Mailfleet-*` header) or as the JSON field `tags`. Bad
tags are refused with the problem named, never dropped silently: a campaign whose tags vanish
would have KPIs that quietly say nothing.

Limits: at most `MAX_TAGS` tags; a key is 1-32 characters of `[a-z0-9_.-]` starting with a
letter or digit (they may become Prometheus label values and log fields); a value is 1-128
printable characters (no control characters; `;` only in the JSON form, where it is not a
separator).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

HEADER = "x-mailfleet-tags"
MAX_TAGS = 10
MAX_VALUE = 128
KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")


class TagError(ValueError):
    """The tags cannot be taken; the text names the problem (shown to the submitter)."""


def parse_header(values: Iterable[str]) -> dict[str, str]:
    """The tags of one or more `X-Mailfleet-Tags` header values (`key=value; key=value`)."""
    found: dict[str, str] = {}
    for value in values:
        for item in value.split(";"):
            item = item.strip()
            if not item:
                continue
            key, equals, tag = item.partition("=")
            if not equals:
                raise TagError(f"{item[:40]!r} is not key=value")
            _add(found, key.strip(), tag.strip())
    return check(found)


def merge(*sources: Mapping[str, str]) -> dict[str, str]:
    """Tags from several places (JSON field and header): a key given twice is refused."""
    found: dict[str, str] = {}
    for source in sources:
        for key, value in source.items():
            _add(found, key, value)
    return check(found)


def check(tags: Mapping[str, object]) -> dict[str, str]:
    """Validate a mapping against the limits; the tags as a plain dict."""
    if len(tags) > MAX_TAGS:
        raise TagError(f"{len(tags)} tags, at most {MAX_TAGS}")
    out: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not KEY.match(key):
            raise TagError(
                f"tag key {str(key)[:40]!r} must be 1-32 of a-z 0-9 _ . - (starting with a-z 0-9)"
            )
        if not isinstance(value, str):
            raise TagError(f"tag {key!r}: the value must be a string")
        if not value or len(value) > MAX_VALUE:
            raise TagError(f"tag {key!r}: the value must be 1-{MAX_VALUE} characters")
        if not value.isprintable():
            raise TagError(f"tag {key!r}: the value must be printable")
        out[key] = value
    return out


def encode(tags: Mapping[str, str]) -> str:
    """The stored form (spool, hand-off envelope): compact JSON, keys sorted."""
    return json.dumps(dict(tags), separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def decode(text: str | None) -> dict[str, str]:
    """The stored form back; {} for none (and for a value that is not a tag object)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _add(found: dict[str, str], key: str, value: str) -> None:
    if key in found:
        raise TagError(f"tag {key[:40]!r} given twice")
    found[key] = value
