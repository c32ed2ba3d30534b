"""What a delivered message carries for open and click tracking, read the way a mail client
reads it: the open pixel (`<img src=".../t/o/<token>.gif">`) and the tracked links
(`<a href=".../t/c/<token>">`) of its own text/html body parts, MIME decoded with the stdlib
email package (charsets, quoted-printable, base64), tags found with `html.parser` (entities
decoded, attributes however quoted). Pure (no I/O). The wire format is the issue-20 tracking
contract (docs/tracking.md).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import email
import email.policy
import html.parser
import json
import re
import urllib.parse
from collections.abc import Iterator
from email.message import EmailMessage, Message

_PIXEL_PATH = re.compile(r"/t/o/([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)\.gif\Z")
_CLICK_PATH = re.compile(r"/t/c/([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)\Z")
"""Paths end with the route (a base URL may put a prefix before it)."""


@dataclasses.dataclass(frozen=True)
class Tracked:
    """The tracking a message carries: its open pixel and its tracked links, in order."""

    pixel: str
    links: tuple[str, ...] = ()

    @property
    def token(self) -> str:
        match = _PIXEL_PATH.search(urllib.parse.urlsplit(self.pixel).path)
        return match.group(1) if match else ""


class _TagScan(html.parser.HTMLParser):
    """img src and a href values (entities decoded), the way a mail client tokenizes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"img": ("src", self.images), "a": ("href", self.links)}.get(tag)
        if wanted is None:
            return
        name, into = wanted
        for key, value in attrs:
            if key == name and value:
                into.append(value.strip())
                return

    handle_startendtag = handle_starttag


def _is_tracked(url: str, pattern: re.Pattern[str]) -> bool:
    parts = urllib.parse.urlsplit(url)
    return (parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
            and pattern.search(parts.path) is not None)


def _html_parts(part: Message) -> Iterator[EmailMessage]:
    """The message's own HTML body parts: not attachments, not inside attached messages."""
    if part.get_content_maintype() == "message":
        return
    if part.is_multipart():
        for sub in part.get_payload():
            if isinstance(sub, Message):
                yield from _html_parts(sub)
    elif isinstance(part, EmailMessage) and part.get_content_type() == "text/html" and (
        not part.is_attachment()
    ):
        yield part


def find_tracking(data: bytes) -> Tracked | None:
    """The first open pixel and every tracked link (deduplicated) of a raw message; None
    without a pixel. MIME is decoded with the stdlib email package (charsets, QP, base64)."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    images: list[str] = []
    links: list[str] = []
    for part in _html_parts(message):
        try:
            text = part.get_content()
        except (LookupError, UnicodeError, ValueError):
            continue  # unknown charset or undecodable bytes: a client would show garbage
        scan = _TagScan()
        scan.feed(str(text))
        scan.close()
        images += scan.images
        links += scan.links
    pixel = next((url for url in images if _is_tracked(url, _PIXEL_PATH)), None)
    if pixel is None:
        return None
    tracked = tuple(dict.fromkeys(url for url in links if _is_tracked(url, _CLICK_PATH)))
    return Tracked(pixel=pixel, links=tracked)


def token_claims(token: str) -> tuple[str | None, str | None]:
    """(message id, recipient) a token's payload names, read without verifying it (the payload
    is signed, not encrypted): what the sender's opened/clicked events will carry."""
    payload = token.partition(".")[0]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return None, None
    if not isinstance(claims, dict):
        return None, None
    message, recipient = claims.get("m"), claims.get("r")
    return (message if isinstance(message, str) else None,
            recipient if isinstance(recipient, str) else None)
