"""Rewriting a message for tracking: links of HTML parts go through the tracking host, one
open pixel is added, and nothing else changes (headers, text parts, unsubscribe links,
MIME structure, charsets and transfer encodings stay valid)."""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import re
from email.message import EmailMessage, Message

import pytest
from mailfleet_sender import tracking_rewrite as tr
from mailfleet_sender import tracking_tokens as tt

KEY = b"tracking-key-0123456789abcdef"
BASE = "https://track.example.com"
UNSUBSCRIBE = "https://mail.example.com/v1/unsubscribe/"
PLAN = tr.Plan(
    base=BASE, key=KEY, message_id="42", recipient="alice@example.org", opens=True,
    clicks=True, class_name="marketing", tags={"campaign": "spring"}, issued=1_700_000_000,
    unsubscribe_prefixes=(UNSUBSCRIBE,),
)
HTML = """<html><head><style>a[href="https://style.example/"] {}</style></head><body>
<p>Bonjour Zoë, <a href="https://shop.example/p?a=1&amp;b=2">our offer</a>
and <a class=x href=https://shop.example/unquoted>more</a>.</p>
<!--[if mso]><a href="https://comment.example/">in a comment</a><![endif]-->
<script>var s = '<a href="https://script.example/">';</script>
<a href="mailto:help@shop.example">mail us</a> <a href="tel:+33123">call</a>
<a href="#top">top</a> <a href="/relative">rel</a>
<a data-mailfleet-notrack href="https://shop.example/private">private</a>
<a href="https://shop.example/unsubscribe?u=7">their unsubscribe</a>
<a href="https://mail.example.com/v1/unsubscribe/TOKEN">pool unsubscribe</a>
<A HREF = 'https://shop.example/upper'>upper</A>
</body></html>
"""
TEXT = "Bonjour Zoë, see https://shop.example/p\n"
TRACKED = {"https://shop.example/p?a=1&b=2", "https://shop.example/unquoted",
           "https://shop.example/upper"}


def _message(*, html_cte: str = "quoted-printable", charset: str = "utf-8",
             html: str = HTML) -> bytes:
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = "Shop <news@shop.example>"
    message["To"] = "alice@example.org"
    message["Subject"] = "Un très long sujet qui sera plié sur plusieurs lignes " + "x" * 40
    message["List-Unsubscribe"] = "<https://shop.example/unsubscribe?u=7>, <mailto:u@shop.example>"
    message.set_content(TEXT, cte="quoted-printable")
    message.add_alternative(html, subtype="html", charset=charset, cte=html_cte)
    return message.as_bytes()


def _parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _part(data: bytes, subtype: str) -> Message:
    body = _parse(data).get_body((subtype,))
    assert body is not None
    return body


def _html(data: bytes) -> str:
    part = _part(data, "html")
    assert isinstance(part, EmailMessage)
    content = part.get_content()
    assert isinstance(content, str)
    return content


def _tracked_urls(html: str) -> list[tt.Claims]:
    found = []
    for token in re.findall(re.escape(BASE) + r"/t/c/([A-Za-z0-9_.-]+)", html):
        claims = tt.verify(token, [KEY])
        assert claims is not None, token
        found.append(claims)
    return found


def _pixels(html: str) -> list[tt.Claims]:
    found = []
    for token in re.findall(re.escape(BASE) + r"/t/o/([A-Za-z0-9_.-]+)\.gif", html):
        claims = tt.verify(token, [KEY])
        assert claims is not None, token
        found.append(claims)
    return found


def _head(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


@pytest.mark.parametrize("cte", ["quoted-printable", "base64", "8bit"])
def test_links_of_the_html_part_are_rewritten_and_decode_to_the_originals(cte: str) -> None:
    data = _message(html_cte=cte)
    result = tr.rewrite_message(data, PLAN)

    html = _html(result.data)
    claims = _tracked_urls(html)
    assert {c.url for c in claims} == TRACKED
    assert result.links == len(claims) == 3
    assert all((c.message_id, c.recipient, c.kind, c.class_name, dict(c.tags), c.issued) ==
               ("42", "alice@example.org", "c", "marketing", {"campaign": "spring"},
                1_700_000_000) for c in claims)
    assert str(_part(result.data, "html")["Content-Transfer-Encoding"]) == cte
    assert "Zoë" in html  # the charset survived


@pytest.mark.parametrize("cte", ["quoted-printable", "base64", "8bit"])
def test_everything_but_the_html_part_is_byte_identical(cte: str) -> None:
    data = _message(html_cte=cte)
    out = tr.rewrite_message(data, PLAN).data
    assert _head(out) == _head(data)  # List-Unsubscribe and every other header untouched
    assert _part(out, "plain").as_bytes() == _part(data, "plain").as_bytes()
    original, rewritten = _parse(data), _parse(out)
    assert [p.get_content_type() for p in original.walk()] == [
        p.get_content_type() for p in rewritten.walk()
    ]
    assert original.get_boundary() == rewritten.get_boundary()


@pytest.mark.parametrize("cte", ["quoted-printable", "base64", "8bit"])
def test_the_html_changes_only_in_the_tracked_hrefs_and_the_pixel(cte: str) -> None:
    html = _html(tr.rewrite_message(_message(html_cte=cte), PLAN).data)
    html = re.sub(r'<img src="[^"]+/t/o/[^"]+" width="1" height="1" alt="">', "", html)
    html = re.sub(re.escape(BASE) + r"/t/c/[A-Za-z0-9_.-]+", "URL", html)
    original = _html(_message(html_cte=cte))
    for raw in ("https://shop.example/p?a=1&amp;b=2", "https://shop.example/unquoted",
                "https://shop.example/upper"):
        original = original.replace(raw, "URL")
    assert html == original


def test_the_links_that_must_stay_stay_as_written() -> None:
    html = _html(tr.rewrite_message(_message(), PLAN).data)
    for kept in (
        '<a href="https://shop.example/unsubscribe?u=7">',  # the List-Unsubscribe URL
        '<a href="https://mail.example.com/v1/unsubscribe/TOKEN">',  # the pool's endpoint
        '<a data-mailfleet-notrack href="https://shop.example/private">',
        '<a href="mailto:help@shop.example">', '<a href="tel:+33123">', '<a href="#top">',
        '<a href="/relative">', '<a href="https://comment.example/">',
        "'<a href=\"https://script.example/\">'", 'a[href="https://style.example/"]',
    ):
        assert kept in html, kept


def test_one_pixel_goes_before_the_closing_body_tag() -> None:
    html = _html(tr.rewrite_message(_message(), PLAN).data)
    [pixel] = _pixels(html)
    assert (pixel.kind, pixel.url, pixel.message_id) == ("o", None, "42")
    assert re.search(r'<img src="[^"]+\.gif" width="1" height="1" alt=""></body>', html)


def test_a_rewritten_message_is_left_as_it_is_when_it_passes_again() -> None:
    once = tr.rewrite_message(_message(), PLAN).data
    again = tr.rewrite_message(once, PLAN)
    assert again.data == once
    assert len(_pixels(_html(again.data))) == 1


def test_without_a_body_tag_the_pixel_goes_at_the_end() -> None:
    out = tr.rewrite_message(_message(html="<p>Hi <a href='https://a.example/'>a</a></p>"),
                             PLAN)
    html = _html(out.data)
    assert html.rstrip().endswith('width="1" height="1" alt="">')
    assert len(_pixels(html)) == 1


def test_a_message_with_nothing_to_do_is_returned_unchanged() -> None:
    data = _message()
    off = tr.Plan(base=BASE, key=KEY, message_id="1", recipient=None)
    assert tr.rewrite_message(data, off).data is data
    plain = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: s\r\n\r\nhttps://x.example/\r\n"
    assert tr.rewrite_message(plain, PLAN).data is plain


def test_opens_only_adds_the_pixel_and_clicks_only_rewrites_the_links() -> None:
    opens = tr.rewrite_message(_message(), dataclasses.replace(PLAN, clicks=False))
    clicks = tr.rewrite_message(_message(), dataclasses.replace(PLAN, opens=False))
    assert (opens.links, opens.pixel) == (0, True)
    assert (clicks.links, clicks.pixel) == (3, False)
    assert _tracked_urls(_html(opens.data)) == [] and _pixels(_html(clicks.data)) == []


def test_base64_lines_stay_short() -> None:
    out = tr.rewrite_message(_message(html_cte="base64"), PLAN).data
    body = _part(out, "html").get_payload()
    assert isinstance(body, str)
    assert all(len(line) <= 76 for line in body.splitlines())
    assert base64.b64decode(body).decode().count("/t/c/") == 3


def test_a_7bit_part_whose_lines_grow_too_long_becomes_quoted_printable() -> None:
    links = "".join(f'<a href="https://shop.example/{i}">{i}</a> ' for i in range(8))
    raw = (
        "From: a@shop.example\r\nTo: b@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        f"<html><body>{links}</body></html>\r\n"
    ).encode()
    out = tr.rewrite_message(raw, PLAN).data
    assert all(len(line) <= tr.MAX_LINE for line in out.split(b"\r\n"))
    assert _parse(out)["Content-Transfer-Encoding"] == "quoted-printable"
    assert len(_tracked_urls(_html(out))) == 8


def test_a_latin1_part_is_encoded_back_in_latin1() -> None:
    out = tr.rewrite_message(_message(charset="iso-8859-1", html_cte="8bit"), PLAN).data
    part = _part(out, "html")
    assert part.get_content_charset() == "iso-8859-1"
    raw = part.get_payload(decode=True)
    assert isinstance(raw, bytes) and "Zoë".encode("latin-1") in raw
    assert len(_tracked_urls(_html(out))) == 3


def test_a_part_whose_bytes_do_not_decode_is_left_alone() -> None:
    raw = (
        b"From: a@shop.example\r\nTo: b@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        b"<a href='https://a.example/'>\xff\xfe</a>\r\n"
    )
    assert tr.rewrite_message(raw, PLAN).data is raw


def test_attachments_and_attached_messages_are_not_rewritten() -> None:
    inner = EmailMessage()
    inner["Subject"] = "forwarded"
    inner.set_content("<a href='https://inner.example/'>x</a>", subtype="html")
    outer = EmailMessage(policy=email.policy.SMTP)
    outer["From"], outer["To"], outer["Subject"] = "a@shop.example", "b@example.org", "s"
    outer.set_content("<html><body><a href='https://body.example/'>b</a></body></html>",
                      subtype="html")
    outer.add_attachment("<a href='https://attached.example/'>a</a>", subtype="html",
                         filename="page.html")
    outer.add_attachment(inner)
    out = tr.rewrite_message(outer.as_bytes(), PLAN).data
    assert b"https://attached.example/" in out and b"https://inner.example/" in out
    assert out.count(b"/t/c/") == 1 and out.count(b"/t/o/") == 1


def test_the_same_url_twice_gets_the_same_token() -> None:
    html = "<body><a href='https://a.example/'>1</a><a href='https://a.example/'>2</a></body>"
    out, links, _ = tr.rewrite_html(html, PLAN)
    assert links == 2
    assert len(set(re.findall(r"/t/c/([^']+)", out))) == 1


@pytest.mark.parametrize(
    ("tag", "url"),
    [
        ('<a\nhref="https://a.example/"\n>x</a>', "https://a.example/"),
        ("<a title='href=\"https://no.example/\"' href='https://a.example/'>x</a>",
         "https://a.example/"),
        ('<a href="  https://a.example/  ">x</a>', "https://a.example/"),
        ('<a href="https://a.example/" href="https://second.example/">x</a>',
         "https://a.example/"),
        ('<a href=https://a.example/?a=1&amp;b=2>x</a>', "https://a.example/?a=1&b=2"),
    ],
    ids=["attributes on several lines", "href= inside another attribute's value",
         "spaces around the URL", "a repeated href (the first counts)",
         "an unquoted value with an entity"],
)
def test_unusual_but_valid_markup_is_read_as_a_browser_reads_it(tag: str, url: str) -> None:
    out, links, _ = tr.rewrite_html(tag, tr.Plan(base=BASE, key=KEY, message_id="1",
                                                 recipient=None, clicks=True))
    assert links == 1
    assert [c.url for c in _tracked_urls(out)] == [url]
    assert "no.example" in out or "no.example" not in tag


def test_list_unsubscribe_urls_are_read_from_the_header() -> None:
    message = _parse(
        b"List-Unsubscribe: <https://a.example/u?x=1>,\r\n <mailto:u@a.example>,"
        b" <http://b.example/u>\r\n\r\nbody\r\n"
    )
    assert tr.list_unsubscribe_urls(message) == ["https://a.example/u?x=1", "http://b.example/u"]


def test_a_link_too_long_to_come_back_in_a_request_stays_as_it_is() -> None:
    long_url = "https://a.example/?q=" + "x" * 4000
    html = f"<body><a href='{long_url}'>long</a><a href='https://a.example/'>short</a></body>"
    out, links, _ = tr.rewrite_html(html, dataclasses.replace(PLAN, opens=False))
    assert links == 1 and long_url in out
    assert [c.url for c in _tracked_urls(out)] == ["https://a.example/"]
