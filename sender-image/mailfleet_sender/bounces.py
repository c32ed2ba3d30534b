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

Order of evidence, most specific first: provider texts (they are stable and far more precise
than the codes, which providers reuse loosely), then the RFC 3463 enhanced code, then generic
texts, then the basic reply code. The first rule that matches wins; `Classification.reason`
names it so an operator can see why a reply was read the way it was.
"""

from __future__ import annotations

import dataclasses
import enum
import re

__all__ = [
    "Category",
    "Classification",
    "EnhancedCode",
    "classify_reply",
    "escalate_soft",
    "parse_enhanced_code",
    "split_reply_lines",
]


class Category(enum.StrEnum):
    """What a reply means for the recipient, the message and our reputation."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    BLOCKED = "blocked"
    THROTTLED = "throttled"


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
        """Whether the scheduler should try this message again (later)."""
        if self.category in (Category.DEFERRED, Category.THROTTLED):
            return True
        if self.category is Category.DELIVERED or self.category is Category.HARD_BOUNCE:
            return False
        return self.temporary

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


@dataclasses.dataclass(frozen=True)
class _Rule:
    """A text rule: the pattern is searched case-insensitively in the joined reply text."""

    pattern: re.Pattern[str]
    category: Category
    reason: str
    # Which reply classes the rule applies to: "4", "5" or "45".
    classes: str = "45"
    # When set, the rule applies only when the caller names one of these providers.
    providers: frozenset[str] | None = None


def _rule(
    pattern: str,
    category: Category,
    reason: str,
    *,
    classes: str = "45",
    providers: tuple[str, ...] | None = None,
) -> _Rule:
    return _Rule(
        pattern=re.compile(pattern, re.IGNORECASE),
        category=category,
        reason=reason,
        classes=classes,
        providers=frozenset(providers) if providers is not None else None,
    )


C = Category

# Provider texts: specific, stable phrases and codes documented by each provider's postmaster
# pages. Checked before the enhanced code because providers reuse codes loosely (Gmail sends
# 421 4.7.0 both for "slow down" and "your reputation is too low").
_PROVIDER_RULES: tuple[_Rule, ...] = (
    # Yahoo / AOL: bracketed codes, https://senders.yahooinc.com/smtp-error-codes
    _rule(r"\[TSS?\d\d\]", C.THROTTLED, "Yahoo deferral for volume or complaints", classes="4"),
    _rule(r"\[TSS?\d\d\]", C.BLOCKED, "Yahoo permanent deferral", classes="5"),
    _rule(r"doesn't have an? (?:yahoo|aol|ymail)[\w.]* account", C.HARD_BOUNCE,
          "Yahoo: no such account"),
    _rule(r"temporarily deferred", C.THROTTLED, "Yahoo temporary deferral", classes="4",
          providers=("yahoo", "aol")),
    # Microsoft (Outlook.com, Hotmail, Office 365)
    _rule(r"\bS3150\b|\bS3140\b|part of their network is on our block list",
          C.BLOCKED, "Outlook: network on block list"),
    _rule(r"\b[45]\.7\.500\b|server busy", C.THROTTLED, "Outlook: server busy, slow down",
          classes="4"),
    _rule(r"\b[45]\.7\.6(?:06|07|08|09|10)\b|banned sending IP",
          C.BLOCKED, "Outlook: sending IP banned"),
    _rule(r"\b5\.7\.7\d\d\b|traffic not accepted from this IP",
          C.BLOCKED, "Outlook: traffic not accepted from this IP"),
    _rule(r"RecipientNotFound|Recipient not found by SMTP address lookup|"
          r"Recipient address rejected: Access denied",
          C.HARD_BOUNCE, "Outlook: recipient not found"),
    _rule(r"QuotaExceeded|mailbox (?:is )?full", C.SOFT_BOUNCE, "mailbox full"),
    # Gmail: https://support.google.com/a/answer/3726730
    _rule(r"receiving mail (?:at a rate|too quickly)", C.THROTTLED,
          "recipient is receiving mail too fast"),
    _rule(r"unusual rate of unsolicited mail", C.THROTTLED,
          "Gmail: unusual rate of unsolicited mail, slow down", classes="4"),
    _rule(r"unsolicited mail|likely (?:unsolicited|spam)|very low reputation|"
          r"low reputation of the sending", C.BLOCKED, "reputation: treated as spam"),
    _rule(r"unauthenticated|does not (?:have|pass) (?:a )?(?:PTR|SPF|DKIM|DMARC)|"
          r"DMARC policy|not pass authentication|PTR record", C.BLOCKED,
          "authentication policy (SPF/DKIM/DMARC/PTR)", classes="5"),
    _rule(r"account that you tried to reach (?:is )?(?:disabled|inactive)", C.HARD_BOUNCE,
          "Gmail: account disabled"),
    _rule(r"account that you tried to reach (?:is )?over quota|over quota|quota exceeded|"
          r"exceeded storage allocation|insufficient (?:system )?storage|"
          r"mailbox (?:is )?over(?:-| )?quota",
          C.SOFT_BOUNCE, "mailbox over quota"),
    # Apple iCloud: https://support.apple.com/en-us/102322
    _rule(r"\[CS0\d\]", C.BLOCKED, "Apple: rejected by local policy"),
    # Orange (France): https://postmaster.orange.fr
    _rule(r"trop de connexions|too many connections", C.THROTTLED, "too many connections"),
    _rule(r"refus.*\bOFR\d*_\d+\b", C.THROTTLED, "Orange: temporary refusal, slow down",
          classes="4"),
    _rule(r"refus.*\bOFR\d*_\d+\b", C.BLOCKED, "Orange: refused by policy", classes="5"),
    # Free (France): "Too many spams from your IP"
    _rule(r"too many spams?", C.BLOCKED, "Free: too much spam from this IP"),
    # GMX / Web.de (United Internet): "Nemesis ESMTP ... Reject due to policy restrictions"
    _rule(r"reject due to policy restrictions|Nemesis ESMTP Service not available",
          C.BLOCKED, "GMX/Web.de: rejected by policy"),
)

# Generic texts, for replies whose enhanced code is missing, generic (x.0.0) or misleading.
_TEXT_RULES: tuple[_Rule, ...] = (
    _rule(r"grey-?listed|gr[ae]ylisting|greylist", C.DEFERRED, "greylisting"),
    _rule(r"too many recipients", C.DEFERRED, "too many recipients in one transaction"),
    _rule(r"rate[- ]?limit|rate limited|throttl|too many (?:messages|mails|emails|sessions)|"
          r"sending rate|slow down|exceeded (?:the )?(?:message |connection )?rate",
          C.THROTTLED, "rate limited"),
    _rule(r"spamhaus|spamcop|barracuda|sorbs|uceprotect|proofpoint|block ?list|black ?list|"
          r"blocked using|listed (?:at|on|in)|\bRBL\b|\bDNSBL\b|\bbanned\b|poor reputation|"
          r"bad reputation|ip reputation|sender reputation|reputation", C.BLOCKED,
          "block list or reputation"),
    _rule(r"spam|policy|prohibited|not accepted|refused|denied|blocked|content rejected|"
          r"virus|phish", C.BLOCKED, "policy rejection", classes="5"),
    _rule(r"user unknown|unknown user|no such (?:user|mailbox|recipient|address)|"
          r"(?:user|mailbox|account|address|recipient) (?:does not|doesn't) exist|"
          r"does not exist|invalid (?:recipient|mailbox|address)|mailbox not found|"
          r"recipient (?:not found|unknown|rejected)|address rejected|unrouteable|"
          r"mailbox unavailable|not our customer|no mailbox here|"
          r"utilisateur inconnu|adresse (?:inconnue|invalide)|"
          r"unbekannt|existiert nicht|(?:account|mailbox) (?:has been )?disabled",
          C.HARD_BOUNCE, "address does not exist", classes="5"),
    _rule(r"message (?:is )?too (?:big|large)|size (?:limit|exceeds)|exceeds? .*size",
          C.SOFT_BOUNCE, "message too large"),
)

# Enhanced-code table: (class, subject, detail or None for "any") -> category, reason.
# Class 4 replies fall back to Deferred/Throttled; the table lists the exceptions.
_ENHANCED_TABLE: tuple[tuple[tuple[int, int, int | None], Category, str], ...] = (
    ((5, 1, None), C.HARD_BOUNCE, "bad destination address"),
    ((5, 2, 1), C.HARD_BOUNCE, "mailbox disabled"),
    ((5, 2, 2), C.SOFT_BOUNCE, "mailbox full"),
    ((5, 2, 3), C.SOFT_BOUNCE, "message larger than the mailbox accepts"),
    ((5, 2, None), C.SOFT_BOUNCE, "mailbox problem"),
    ((5, 3, 4), C.SOFT_BOUNCE, "message too big for the system"),
    ((5, 3, None), C.SOFT_BOUNCE, "remote mail system problem"),
    ((5, 4, 4), C.HARD_BOUNCE, "unable to route to the domain"),
    ((5, 4, 1), C.HARD_BOUNCE, "no answer from host / recipient rejected"),
    ((5, 4, None), C.SOFT_BOUNCE, "network or routing problem"),
    ((5, 5, None), C.SOFT_BOUNCE, "protocol problem"),
    ((5, 6, None), C.SOFT_BOUNCE, "message content or media problem"),
    ((5, 7, None), C.BLOCKED, "security or policy rejection"),
    ((4, 2, 2), C.SOFT_BOUNCE, "mailbox full (temporary)"),
    ((4, 7, None), C.THROTTLED, "temporarily refused, slow down"),
)


def _enhanced_verdict(enhanced: EnhancedCode, code: int) -> tuple[Category, str] | None:
    """Look the enhanced code up; a class that contradicts the reply code defers to the code."""
    klass = code // 100
    for (e_class, e_subject, e_detail), category, reason in _ENHANCED_TABLE:
        if e_class != klass or e_subject != enhanced.subject:
            continue
        if e_detail is None or e_detail == enhanced.detail:
            return category, f"{reason} ({enhanced})"
    return None


def _rule_applies(rule: _Rule, code: int, provider: str | None) -> bool:
    if str(code // 100) not in rule.classes:
        return False
    return rule.providers is None or (provider is not None and provider in rule.providers)


def classify_reply(code: int, text: str, *, provider: str | None = None) -> Classification:
    """Classify one SMTP reply (basic code and text, multi-line or not).

    `provider` is the sending-side name of the receiving site (e.g. "yahoo"); a few rules are
    only trusted for one provider (Yahoo's plain "temporarily deferred" means "slow down", the
    same words elsewhere do not).
    """
    line = split_reply_lines(text)
    enhanced = parse_enhanced_code(line)
    name = provider.lower() if provider else None

    def verdict(category: Category, reason: str) -> Classification:
        return Classification(
            category=category, code=code, enhanced=enhanced, reason=reason, provider=name
        )

    if 200 <= code < 300:
        return verdict(C.DELIVERED, "accepted")
    if not 400 <= code < 600:
        # 1xx/3xx as a final answer is a protocol error on the remote side: try again later.
        return verdict(C.DEFERRED, f"unexpected reply code {code}")

    for rule in _PROVIDER_RULES:
        if _rule_applies(rule, code, name) and rule.pattern.search(line):
            return verdict(rule.category, rule.reason)

    # A specific enhanced code is reliable enough to beat generic wording, except for x.7.y
    # where only the text tells greylisting and rate limits apart from blocks, and x.0.0 /
    # x.5.0 which servers use loosely (Hotmail answers 5.5.0 for unknown users).
    table = _enhanced_verdict(enhanced, code) if enhanced is not None else None
    policy = table is not None and table[0] in (C.BLOCKED, C.THROTTLED)
    loose = enhanced is None or (enhanced.detail == 0 and enhanced.subject in (0, 5))
    if table is not None and not loose and not policy:
        return verdict(*table)
    for rule in _TEXT_RULES:
        if policy and rule.category in (C.HARD_BOUNCE, C.SOFT_BOUNCE):
            continue
        if _rule_applies(rule, code, name) and rule.pattern.search(line):
            return verdict(rule.category, rule.reason)
    if table is not None:
        return verdict(*table)

    if code == 421 or code // 100 == 4:
        return verdict(C.DEFERRED, "temporary failure")
    if code == 552:
        # RFC 5321: 552 is "exceeded storage allocation".
        return verdict(C.SOFT_BOUNCE, "exceeded storage allocation")
    # An unreadable permanent failure: soft, so only repeats suppress the address.
    return verdict(C.SOFT_BOUNCE, "unclassified permanent failure")


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
        return C.HARD_BOUNCE
    return C.SOFT_BOUNCE
