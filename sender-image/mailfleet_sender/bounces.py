"""Classify every SMTP reply into what the sender should do about it. Pure (no I/O).

Why a category and not just the code: the same `550` can mean "this address does not exist"
(suppress it), "your IP is on our block list" (the recipient is fine, our reputation is not)
or "message too large" (this message failed, the address is good). The scheduler, the
suppression list, the reactive shaper and the reputation counters each need a different one of
those answers, so every reply is reduced once, here, to a `Classification`:

- Delivered: 2xx.
- Deferred: a temporary failure that says nothing about the address or our reputation
  (greylisting, remote system trouble, timeouts); retry on schedule.
- Throttled: the receiver asks us to slow down (421 4.7.x, "rate limited", Yahoo [TSS04],
  Outlook 4.7.500/4.7.650, Orange "trop de connexions"); retry, and the shaper slows the
  provider down.
- HardBounce: the address does not exist or is disabled for good (5.1.x, 5.2.1, "user
  unknown"); never retry, suppress.
- SoftBounce: the address exists but this message could not be delivered (mailbox full, message
  too large or malformed) or a permanent failure we cannot read; suppress only after
  `softToHardAfter` of them in a row (`escalate_soft`), so one odd reply never suppresses a
  good address.
- Blocked: the receiver refuses *us* (block lists, reputation, authentication or content
  policy: 5.7.x, Spamhaus, Outlook S3150, Yahoo 5.7.9, Orange OFR codes); the address stays,
  the reputation circuit breaker counts it.

Order of evidence, most specific first (the tables are data, in `bounce_rules`): the provider's
own table (named by the caller or recognised by its marker), then what the text says (a precise
text beats a generic or contradicting enhanced code), then the RFC 3463 enhanced code, then the
basic code. The basic code's class alone decides retry (4xx) versus final (5xx); the category says
whose problem the reply is. `Classification.reason` names the rule used.
"""

from __future__ import annotations

import dataclasses
import re

from mailfleet_sender import bounce_rules

__all__ = [
    "Category",
    "Classification",
    "EnhancedCode",
    "classify_reply",
    "escalate_soft",
    "parse_enhanced_code",
    "split_reply_lines",
]


Category = bounce_rules.Category


@dataclasses.dataclass(frozen=True, order=True)
class EnhancedCode:
    """An RFC 3463 status code `class.subject.detail`, e.g. 5.1.1."""

    klass: int
    subject: int
    detail: int

    def __str__(self) -> str:
        return f"{self.klass}.{self.subject}.{self.detail}"


@dataclasses.dataclass(frozen=True)
class Classification:
    """The verdict on one SMTP reply; `reason` is a short human text naming the rule used."""

    category: Category
    code: int
    enhanced: EnhancedCode | None
    reason: str
    provider: str | None = None

    @property
    def temporary(self) -> bool:
        """A 4xx reply: the message may be retried whatever the category."""
        return 400 <= self.code < 500

    @property
    def retryable(self) -> bool:
        """Whether the scheduler should try this message again: the reply code's class decides
        (4xx yes, 5xx no), never the category alone; a 1xx/3xx final answer is retried."""
        if self.category is Category.DELIVERED:
            return False
        return not 500 <= self.code < 600

    @property
    def suppresses(self) -> bool:
        """Whether this reply alone puts the address on the suppression list."""
        return self.category is Category.HARD_BOUNCE


_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_REPLY_PREFIX = re.compile(r"^\s*\d{3}(?:[ -]|$)")


def split_reply_lines(text: str) -> str:
    """Join a (possibly multi-line) reply into one line without the repeated `550-` prefixes.

    Accepts both what aiosmtplib hands over (text only) and raw wire lines, so tests and logs
    can feed replies as they were seen.
    """
    lines = [_REPLY_PREFIX.sub("", line).strip() for line in text.splitlines()]
    return " ".join(line for line in lines if line)


def parse_enhanced_code(text: str) -> EnhancedCode | None:
    """The first RFC 3463 code in a reply text (normally its first word), or None."""
    match = _ENHANCED.search(text)
    if match is None:
        return None
    klass, subject, detail = (int(group) for group in match.groups())
    return EnhancedCode(klass=klass, subject=subject, detail=detail)


def _applies(rule: bounce_rules.Rule, code: int, line: str) -> bool:
    return str(code // 100) in rule.classes and rule.pattern.search(line) is not None


def _provider_tables(name: str | None, line: str) -> list[bounce_rules.ProviderRules]:
    """The named provider's table first, then any table whose marker the reply carries."""
    named = [
        table for table in bounce_rules.PROVIDERS if name is not None and name in table.aliases
    ]
    marked = [
        table for table in bounce_rules.PROVIDERS
        if table not in named and table.marker is not None and table.marker.search(line)
    ]
    return named + marked


def _enhanced_verdict(enhanced: EnhancedCode, code: int) -> tuple[Category, str] | None:
    """Look the enhanced code up; a class that contradicts the reply code defers to the code."""
    if enhanced.klass != code // 100:
        return None
    for (e_class, e_subject, e_detail), category, reason in bounce_rules.ENHANCED:
        if e_class != enhanced.klass or e_subject != enhanced.subject:
            continue
        if e_detail is None or e_detail == enhanced.detail:
            return category, f"{reason} ({enhanced})"
    return None


def classify_reply(code: int, text: str, *, provider: str | None = None) -> Classification:
    """Classify one SMTP reply (basic code and text, multi-line or not).

    `provider` is the sending-side name of the receiving site (e.g. "yahoo"); its table is read
    first. Tables of other providers apply when the reply carries their marker (OFR_416 is
    Orange's wherever it comes from).
    """
    line = split_reply_lines(text)
    enhanced = parse_enhanced_code(line)
    name = provider.lower() if provider else None

    def verdict(category: Category, reason: str) -> Classification:
        return Classification(
            category=category, code=code, enhanced=enhanced, reason=reason, provider=name
        )

    if 200 <= code < 300:
        return verdict(Category.DELIVERED, "accepted")
    if not 400 <= code < 600:
        # 1xx/3xx as a final answer is a protocol error on the remote side: try again later.
        return verdict(Category.DEFERRED, f"unexpected reply code {code}")
    for table in _provider_tables(name, line):
        for rule in table.rules:
            if _applies(rule, code, line):
                return verdict(rule.category, rule.reason)
    for rule in bounce_rules.TEXT_RULES:
        if _applies(rule, code, line):
            return verdict(rule.category, rule.reason)
    by_code = _enhanced_verdict(enhanced, code) if enhanced is not None else None
    if by_code is not None:
        return verdict(*by_code)
    if code // 100 == 4:
        return verdict(Category.DEFERRED, "temporary failure")
    if code == 556:
        # RFC 7504: 556 is "domain does not accept mail" (null MX).
        return verdict(Category.HARD_BOUNCE, "domain does not accept mail")
    if code == 552:
        # RFC 5321: 552 is "exceeded storage allocation".
        return verdict(Category.SOFT_BOUNCE, "exceeded storage allocation")
    # An unreadable permanent failure: soft, so only repeats suppress the address.
    return verdict(Category.SOFT_BOUNCE, "unclassified permanent failure")


def escalate_soft(previous_soft_count: int, soft_to_hard_after: int) -> Category:
    """The category of a soft bounce given how many came before it for the same address.

    `previous_soft_count` counts earlier soft bounces of the address in a row (a delivery in
    between resets it, which is the caller's bookkeeping). With `soft_to_hard_after` = 3 the
    third soft bounce in a row is hard. 0 disables escalation.
    """
    if previous_soft_count < 0:
        raise ValueError(f"previous_soft_count must be >= 0, got {previous_soft_count}")
    if soft_to_hard_after < 0:
        raise ValueError(f"soft_to_hard_after must be >= 0, got {soft_to_hard_after}")
    if soft_to_hard_after and previous_soft_count + 1 >= soft_to_hard_after:
        return Category.HARD_BOUNCE
    return Category.SOFT_BOUNCE
