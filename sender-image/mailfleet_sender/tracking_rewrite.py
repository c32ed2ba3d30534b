"""Rewriting a message for open and click tracking, at submission (before it is spooled, so
before DKIM signing, which happens at delivery). Pure (no I/O).

In every text/html part that is part of the message body (not an attachment, not inside an
attached message): each `<a href>` with an absolute http(s) URL points to
`<base>/t/c/<token>` instead, and one open pixel `<img src="<base>/t/o/<token>.gif">` goes
before the first part's closing `</body>` (or at its end). Never rewritten: mailto:, tel:,
fragments and relative links; links marked `data-mailfleet-notrack`; the unsubscribe links
(the message's own List-Unsubscribe https URLs and the pool's unsubscribe endpoint); links
already on the tracking host (a message handed to another pod passes intake again). Headers
are not touched at all, List-Unsubscribe included.

Links are found with `html.parser`, not a regular expression over the document: a regex does
not know where a tag really starts, so it rewrites `href=` inside comments (Outlook's
conditional comments), inside `<script>`/`<style>` text, or inside another attribute's value,
and misses attributes split over lines or quoted unusually. The parser tokenizes the way a
browser does; only the one attribute value inside a tag it found is replaced, at its exact
position, and every other character of the part is kept.

MIME: parsed and written with the stdlib `email` package (policy.default, headers emitted as
received). Only the HTML parts change: decoded with their charset, rewritten, encoded again
with their own Content-Transfer-Encoding (a 7bit/8bit part whose lines would pass 998 octets
becomes quoted-printable). A part whose charset is unknown or whose bytes do not decode is
left alone. When nothing is rewritten the original bytes are returned unchanged.
"""

from __future__ import annotations

import base64
import dataclasses
import email.policy
import email.quoprimime
import html
import html.parser
import re
from collections.abc import Iterator, Mapping, Sequence
from email.message import Message
from email.parser import BytesParser

from mailfleet_sender import tracking_tokens

POLICY = email.policy.default.clone(linesep="\r\n", refold_source="none")
"""Headers are written back as they came (no refolding): nothing outside the HTML changes."""
NOTRACK_ATTRIBUTE = "data-mailfleet-notrack"
MAX_LINE = 998
"""RFC 5322 §2.1.1: longest line without the CRLF."""
CLICK_PATH = "/t/c/"
_NEWLINE = re.compile("\n")
OPEN_PATH = "/t/o/"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one message gets, decided by the caller from its class and the pool's config."""

    base: str
    """Origin of tracking URLs (https://track.example.com)."""
    key: bytes
    message_id: str
    recipient: str | None
    """The only recipient; None when the message has several (tokens then name none)."""
    opens: bool = False
    clicks: bool = False
    class_name: str | None = None
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    issued: int | None = None
    unsubscribe_prefixes: Sequence[str] = ()
    """URL prefixes never rewritten (the pool's one-click endpoint)."""


@dataclasses.dataclass(frozen=True)
class Result:
    data: bytes
    links: int = 0
    """Links rewritten."""
    pixel: bool = False


def rewrite_message(data: bytes, plan: Plan) -> Result:
    """The message with its HTML parts rewritten per `plan` (the same bytes when nothing
    applies)."""
    if not (plan.opens or plan.clicks):
        return Result(data)
    message = BytesParser(policy=POLICY).parsebytes(data)
    keep = set(list_unsubscribe_urls(message))
    links, pixel_added, changed, head_changed = 0, False, False, False
    for part in _body_parts(message):
        if part.get_content_type() != "text/html" or part.get_content_disposition() == "attachment":
            continue
        decoded = _decode(part)
        if decoded is None:
            continue
        text, charset = decoded
        new_text, count, pixel = rewrite_html(
            text, plan, keep=keep, pixel=plan.opens and not pixel_added
        )
        if new_text == text:
            pixel_added |= pixel  # a pixel already there counts as added
            continue
        headers_changed = _replace(part, new_text, charset)
        head_changed |= headers_changed and part is message
        links, pixel_added, changed = links + count, pixel_added or pixel, True
    if not changed:
        return Result(data)
    out = message.as_bytes(policy=POLICY)
    if not head_changed:
        # The generator writes a header folded right after its colon with one more space;
        # the message's own header section is put back as it came, byte for byte.
        old_end, new_end = data.find(b"\r\n\r\n"), out.find(b"\r\n\r\n")
        if old_end >= 0 and new_end >= 0:
            out = data[:old_end] + out[new_end:]
    return Result(out, links=links, pixel=pixel_added)


def list_unsubscribe_urls(message: Message) -> list[str]:
    """The http(s) URLs of the message's List-Unsubscribe headers (RFC 2369: `<url>, ...`)."""
    urls: list[str] = []
    for value in message.get_all("List-Unsubscribe") or []:
        for item in str(value).split(","):
            item = item.strip()
            if item.startswith("<") and item.endswith(">"):
                url = "".join(item[1:-1].split())  # folding whitespace is not part of it
                if url.lower().startswith(("http://", "https://")):
                    urls.append(url)
    return urls


# --- MIME -------------------------------------------------------------------------------


def _body_parts(part: Message) -> Iterator[Message]:
    """Leaf parts of the message body; never into an attached message (message/*), whose
    links are someone else's mail."""
    if part.get_content_maintype() == "message":
        return
    if part.is_multipart():
        for child in part.get_payload():
            assert isinstance(child, Message)
            yield from _body_parts(child)
        return
    yield part


def _decode(part: Message) -> tuple[str, str] | None:
    """The part's HTML text and the charset to encode it back with; None when it cannot be
    decoded exactly (then it is left as it is)."""
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return None
    declared = part.get_content_charset()
    for charset in [declared] if declared else ["us-ascii", "utf-8"]:
        try:
            text = raw.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
        if text.encode(charset) == raw:  # round-trips exactly, so nothing else changes
            return text, charset
    return None


def _replace(part: Message, text: str, charset: str) -> bool:
    """Put `text` back into `part` under its own transfer encoding (or quoted-printable when
    the lines got too long for 7bit/8bit; True then: its header changed); every other header
    stays as it was."""
    raw = text.encode(charset)
    cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    if cte == "base64":
        lines = base64.encodebytes(raw).decode("ascii")
        part.set_payload(lines)
        return False
    too_long = any(len(line) > MAX_LINE for line in raw.splitlines())
    if cte == "quoted-printable" or too_long:
        part.set_payload(email.quoprimime.body_encode(raw.decode("latin-1")))
        if cte == "quoted-printable":
            return False
        if "Content-Transfer-Encoding" in part:
            part.replace_header("Content-Transfer-Encoding", "quoted-printable")
        else:
            part["Content-Transfer-Encoding"] = "quoted-printable"
        return True
    part.set_payload(raw.decode("ascii", "surrogateescape"))
    return False


# --- HTML -------------------------------------------------------------------------------


@dataclasses.dataclass
class _Anchor:
    start: int
    """Offset of the tag in the document."""
    tag: str
    """The tag's source text, as the parser saw it."""
    attrs: list[tuple[str, str | None]]


class _Scanner(html.parser.HTMLParser):
    """Collects `<a>` start tags with their offsets, the last `</body>`, and whether an
    open pixel of ours is already there."""

    def __init__(self, text: str, pixel_prefix: str) -> None:
        super().__init__(convert_charrefs=True)
        self._line_starts = [0] + [m.end() for m in _NEWLINE.finditer(text)]
        self._pixel_prefix = pixel_prefix
        self.anchors: list[_Anchor] = []
        self.body_end: int | None = None
        self.has_pixel = False

    def _offset(self) -> int:
        line, column = self.getpos()
        return self._line_starts[line - 1] + column

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(_Anchor(self._offset(), self.get_starttag_text() or "", attrs))
        elif tag == "img":
            src = next((v for k, v in attrs if k == "src"), None) or ""
            self.has_pixel |= src.strip().startswith(self._pixel_prefix)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "body":
            self.body_end = self._offset()


def rewrite_html(
    text: str, plan: Plan, *, keep: set[str] | None = None, pixel: bool = True
) -> tuple[str, int, bool]:
    """`text` with its links rewritten (plan.clicks) and a pixel added (plan.opens and
    `pixel`); also the number of links rewritten and whether a pixel is there now."""
    scanner = _Scanner(text, plan.base + OPEN_PATH)
    scanner.feed(text)
    scanner.close()
    edits: list[tuple[int, int, str]] = []
    if plan.clicks:
        tokens: dict[str, str] = {}
        for anchor in scanner.anchors:
            edit = _link_edit(text, anchor, plan, keep or set(), tokens)
            if edit is not None:
                edits.append(edit)
    add_pixel = pixel and plan.opens and not scanner.has_pixel
    if add_pixel:
        at = len(text) if scanner.body_end is None else scanner.body_end
        edits.append((at, at, _pixel_tag(plan)))
    out = text
    for start, end, replacement in sorted(edits, reverse=True):
        out = out[:start] + replacement + out[end:]
    return out, len(edits) - int(add_pixel), add_pixel or scanner.has_pixel


def _token(plan: Plan, kind: tracking_tokens.Kind, url: str | None) -> str:
    claims = tracking_tokens.Claims(
        message_id=plan.message_id, recipient=plan.recipient, url=url, kind=kind,
        class_name=plan.class_name, tags=dict(plan.tags), issued=plan.issued,
    )
    return tracking_tokens.sign(claims, plan.key)


def _pixel_tag(plan: Plan) -> str:
    src = f"{plan.base}{OPEN_PATH}{_token(plan, tracking_tokens.OPEN, None)}.gif"
    return f'<img src="{src}" width="1" height="1" alt="">'


def _link_edit(
    text: str, anchor: _Anchor, plan: Plan, keep: set[str], tokens: dict[str, str]
) -> tuple[int, int, str] | None:
    """The replacement of one anchor's href value, or None when it stays."""
    names = [name for name, _ in anchor.attrs]
    if NOTRACK_ATTRIBUTE in names or "href" not in names:
        return None
    url = (next(v for k, v in anchor.attrs if k == "href") or "").strip(" \t\n\r\f")
    if not _trackable(url, plan, keep):
        return None
    if text[anchor.start:anchor.start + len(anchor.tag)] != anchor.tag:
        return None  # the parser's position is not where we think: leave the link alone
    span = _href_span(anchor.tag)
    if span is None or html.unescape(anchor.tag[span[0]:span[1]]).strip(" \t\n\r\f") != url:
        return None  # the parser and this walk disagree on the tag: leave it alone
    if url not in tokens:
        token = _token(plan, tracking_tokens.CLICK, url)
        tokens[url] = (
            f"{plan.base}{CLICK_PATH}{token}" if len(token) <= tracking_tokens.MAX_TOKEN_CHARS
            else ""  # too long to come back in a request line: the link stays as it is
        )
    if not tokens[url]:
        return None
    return anchor.start + span[0], anchor.start + span[1], tokens[url]


def _trackable(url: str, plan: Plan, keep: set[str]) -> bool:
    if not tracking_tokens.is_trackable_url(url) or url in keep:
        return False
    prefixes = (*plan.unsubscribe_prefixes, plan.base + "/t/")
    return not any(url.startswith(prefix) for prefix in prefixes)


def _href_span(tag: str) -> tuple[int, int] | None:
    """Start and end, within the tag's source, of the first href attribute's value (without
    its quotes). The tag was already delimited by the parser: this only walks its attributes
    (HTML's attribute syntax: name, optional `=` and a quoted or unquoted value)."""
    i, n = 1, len(tag)
    while i < n and not _space(tag[i]) and tag[i] not in "/>":
        i += 1  # the tag name
    while i < n:
        while i < n and (_space(tag[i]) or tag[i] == "/"):
            i += 1
        if i >= n or tag[i] == ">":
            return None
        start, i = i, i + 1  # a name's first character may be anything, even "="
        while i < n and not _space(tag[i]) and tag[i] not in "/>=":
            i += 1
        name = tag[start:i].lower()
        while i < n and _space(tag[i]):
            i += 1
        if i >= n or tag[i] != "=":
            continue  # an attribute without a value
        i += 1
        while i < n and _space(tag[i]):
            i += 1
        if i < n and tag[i] in "\"'":
            quote, i = tag[i], i + 1
            end = tag.find(quote, i)
            if end < 0:
                return None
            value = (i, end)
            i = end + 1
        else:
            start_value = i
            while i < n and not _space(tag[i]) and tag[i] != ">":
                i += 1
            value = (start_value, i)
        if name == "href":
            return value
    return None


def _space(c: str) -> bool:
    return c in " \t\n\r\f"

