"""Fuzzing the parsers of what the feedback port takes from the whole Internet: DSNs and ARF
reports (`reports`, `feedback`), the mailto unsubscribe, and SMTP replies (`bounces`). Any
input either parses or raises the module's documented error (`ReportError`), never anything
else, and within a bound of CPU time (thread time: other load on the machine does not count).

Budget: a fixed number of examples, derandomized and without the example database, so a run
is reproducible and takes the same work under load.
"""

from __future__ import annotations

import base64
import quopri
import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mailfleet_sender import bounces, feedback, reports

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
KEY = b"k" * 32
MARKS = feedback.Marks(trace_keys=[KEY])
CPU_BOUND = 2.0
"""Seconds of this thread's CPU for one input of at most a few hundred KB. The parsers run off
the event loop but one at a time per `parseConcurrency`; a quadratic corner would show here."""

TRACE_VALUE = reports.encode_trace(
    reports.Trace(message_id="01HF2Z8M3QK", recipient="someone@gmail.test", klass="marketing",
                  source_ip="203.0.113.7"),
    KEY, nonce=b"\x01" * 12,
)
VERP = reports.encode_verp_return_path("bounce.example.test", "01HF2Z8M3QK",
                                       "someone@gmail.test", key=KEY)

DSN = (
    "From: MAILER-DAEMON@mx.gmail.test\r\nTo: " + VERP + "\r\nMIME-Version: 1.0\r\n"
    'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
    "--b1\r\nContent-Type: text/plain\r\n\r\nYour message was not delivered.\r\n"
    "--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
    "Reporting-MTA: dns; mx.gmail.test\r\n\r\n"
    "Final-Recipient: rfc822; someone@gmail.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n"
    "--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    "Return-Path: <" + VERP + ">\r\nFrom: a@example.test\r\nTo: someone@gmail.test\r\n"
    "Message-ID: <1@example.test>\r\n" + reports.TRACE_HEADER + ": " + TRACE_VALUE + "\r\n\r\n"
    "--b1--\r\n"
).encode()

ARF = (
    "From: feedback@yahoo.test\r\nTo: fbl@bounce.example.test\r\nMIME-Version: 1.0\r\n"
    'Content-Type: multipart/report; report-type=feedback-report; boundary="b2"\r\n\r\n'
    "--b2\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n"
    "--b2\r\nContent-Type: message/feedback-report\r\n\r\n"
    "Feedback-Type: abuse\r\nUser-Agent: yahoo\r\nVersion: 1\r\n"
    "Original-Mail-From: <" + VERP + ">\r\nOriginal-Rcpt-To: someone@gmail.test\r\n"
    "Source-IP: 203.0.113.7\r\n\r\n"
    "--b2\r\nContent-Type: message/rfc822\r\n\r\n"
    "From: a@example.test\r\nTo: someone@gmail.test\r\nMessage-ID: <1@example.test>\r\n"
    + reports.TRACE_HEADER + ": " + TRACE_VALUE + "\r\n\r\nhello\r\n"
    "--b2--\r\n"
).encode()

FIELD_NAMES = [
    "Final-Recipient", "Original-Recipient", "Action", "Status", "Diagnostic-Code",
    "Reporting-MTA", "Original-Envelope-Id", "Feedback-Type", "Original-Mail-From",
    "Original-Rcpt-To", "Source-IP", "Arrival-Date", "Message-ID", "Return-Path",
    reports.TRACE_HEADER, "Content-Type", "Content-Transfer-Encoding", "X-Junk",
]
CONTENT_TYPES = [
    "message/delivery-status", "message/feedback-report", "text/rfc822-headers",
    "message/rfc822", "text/plain", "message/global-delivery-status",
    "message/global-headers", 'multipart/mixed; boundary="inner"', "application/x-junk",
]
ENCODINGS = ["", "7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "bogus"]
field_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80
)


@st.composite
def field_block(draw: st.DrawFn) -> str:
    fields = draw(st.lists(st.tuples(st.sampled_from(FIELD_NAMES), field_text), max_size=8))
    folded = draw(st.booleans())
    sep = "\r\n " if folded else " "
    return "".join(f"{name}:{sep}{value}\r\n" for name, value in fields)


def _encode(body: str, encoding: str) -> str:
    if encoding == "base64":
        return base64.encodebytes(body.encode("utf-8", "surrogatepass")).decode()
    if encoding == "quoted-printable":
        return quopri.encodestring(body.encode("utf-8", "surrogatepass")).decode()
    return body


@st.composite
def structured_report(draw: st.DrawFn) -> bytes:
    """A multipart/report shaped like the real thing, with every part and field up for grabs:
    this reaches far deeper into the parsers than random bytes."""
    report_type = draw(st.sampled_from(["delivery-status", "feedback-report", "disposition",
                                        "", "DELIVERY-STATUS"]))
    boundary = draw(st.sampled_from(["b", "==x==", "a b", "", "--"]))
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        ctype = draw(st.sampled_from(CONTENT_TYPES))
        encoding = draw(st.sampled_from(ENCODINGS))
        blocks = "\r\n".join(draw(st.lists(field_block(), max_size=4)))
        header = f"Content-Type: {ctype}\r\n"
        if encoding:
            header += f"Content-Transfer-Encoding: {encoding}\r\n"
        parts.append(f"--{boundary}\r\n{header}\r\n{_encode(blocks, encoding)}\r\n")
    closing = draw(st.sampled_from([f"--{boundary}--\r\n", "", f"--{boundary}\r\n"]))
    text = (
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type={report_type}; boundary="{boundary}"'
        "\r\n\r\n" + "".join(parts) + closing
    )
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid DSN or ARF report with a few bytes replaced, inserted or cut."""
    data = bytearray(draw(st.sampled_from([DSN, ARF])))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["replace", "insert", "cut", "repeat"]))
        chunk = draw(st.binary(min_size=1, max_size=16))
        if action == "replace":
            data[position:position + len(chunk)] = chunk
        elif action == "insert":
            data[position:position] = chunk
        elif action == "cut":
            del data[position:position + draw(st.integers(1, 200))]
        else:  # one slice many times: long lines, many parts, deep folding
            data[position:position] = bytes(data[position:position + 40]) * draw(
                st.integers(2, 2000))
    return bytes(data)


any_report = st.one_of(st.binary(max_size=4000), structured_report(), mutated())


def _bounded(call: object, *args: object) -> object:
    """Run `call`; only ReportError may escape, and it must not take long."""
    start = time.thread_time()
    try:
        return call(*args)  # type: ignore[operator]
    except reports.ReportError as exc:
        assert exc.reason, "a ReportError names its reason"
        return exc
    finally:
        used = time.thread_time() - start
        assert used < CPU_BOUND, f"{getattr(call, '__name__', call)} took {used:.2f}s of CPU"


def test_the_seed_reports_are_valid() -> None:
    """The mutations start from reports that parse and match (or they would test little)."""
    dsn = feedback.read_report(DSN, [VERP], MARKS)
    arf = feedback.read_report(ARF, [], MARKS)
    assert [e.recipient for e in dsn.events] == ["someone@gmail.test"]
    assert [e.kind for e in arf.events] == [feedback.Kind.COMPLAINT]


@FUZZ
@given(raw=any_report)
@example(raw=b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n"
         b"\r\n--b\r\nContent-Type: message/delivery-status\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\n====\r\n--b--\r\n")
@example(raw=DSN.replace(b"Status: 5.1.1", b"Status: 5.1.1.1.1.1"))
@example(raw=ARF.replace(b"Feedback-Type: abuse", b"Feedback-Type:"))
def test_reports_parse_or_raise_report_error(raw: bytes) -> None:
    for parse in (reports.parse_dsn, reports.parse_arf, reports.parse_report):
        _bounded(parse, raw)


@FUZZ
@given(raw=any_report, rcpts=st.lists(st.sampled_from(["", VERP, "x@y", "<>", "a" * 300]),
                                       max_size=3))
def test_reading_a_report_for_the_feedback_port_raises_only_report_error(
    raw: bytes, rcpts: list[str]
) -> None:
    result = _bounded(feedback.read_report, raw, rcpts, MARKS)
    if isinstance(result, feedback.Reading):
        # Whatever matched must be one of our marks: the only recipient we ever mailed.
        assert {e.recipient.lower() for e in result.events} <= {"someone@gmail.test"}


@FUZZ
@given(raw=st.one_of(st.binary(max_size=2000), mutated(),
                     st.builds(lambda t: f"Subject: {t}\r\n\r\n".encode("utf-8",
                                                                        "surrogatepass"),
                               field_text)))
@example(raw=b"Subject: unsubscribe " + b"A" * 40 + b"\r\n\r\n")
@example(raw=b"Subject: =?utf-8?q?unsubscribe?= x\r\n\r\n")
def test_a_mailto_unsubscribe_is_a_token_or_none(raw: bytes) -> None:
    start = time.thread_time()
    token = feedback.unsubscribe_token(raw)
    assert time.thread_time() - start < CPU_BOUND
    assert token is None or (isinstance(token, str) and len(token) >= 20)


reply_text = st.one_of(
    field_text,
    st.text(max_size=2000),
    # Long runs of what the rules look for: a backtracking regex shows up as CPU time.
    st.builds(lambda piece, n: piece * n,
              st.sampled_from(["5.7.1 ", "550-", " ", "x", "4.", "user unknown ", "\r\n",
                               "[TSS04]", "S3150 ", "5", "."]),
              st.integers(1, 5000)),
)


@FUZZ
@given(code=st.integers(min_value=-(2**70), max_value=2**70), text=reply_text,
       provider=st.one_of(st.none(), st.sampled_from(["gmail", "yahoo", "outlook", "orange",
                                                      "", "unknown"])))
@example(code=550, text="5.1.1 " * 5000, provider=None)
@example(code=0, text="", provider="")
def test_any_reply_gets_a_classification(code: int, text: str, provider: str | None) -> None:
    start = time.thread_time()
    verdict = bounces.classify_reply(code, text, provider=provider)
    bounces.parse_enhanced_code(text)
    bounces.split_reply_lines(text)
    assert time.thread_time() - start < CPU_BOUND
    assert isinstance(verdict.category, bounces.Category)
    assert verdict.reason
