"""The rule tables `bounces.classify_reply` reads, as data. Pure (no I/O).

Three kinds of tables, read in this order (see docs/deliverability.md, "Bounce classes"):

1. Provider tables (`PROVIDERS`): one per receiving provider, applied when the caller names that
   provider or when the reply carries the provider's own marker (Orange/La Poste `OFR_416`,
   Yahoo `[TSS04]`, SFR `SFR_IN_101`, Microsoft `5.7.5xx`...). Providers reuse the standard codes
   loosely; their own codes and wording are precise.
2. Text rules (`TEXT_RULES`): what a reply says, most specific meaning first. A precise text
   beats the enhanced code, which servers send generically (5.7.1 for "no such user", 5.1.0 for
   "invalid sender", 5.2.0 for "spam").
3. The RFC 3463 enhanced code (`ENHANCED`), then the basic code.

Every rule names the reply classes it applies to ("4", "5" or "45"): the basic code decides retry
versus final; a rule only says whose problem the reply is.
"""

from __future__ import annotations

import dataclasses
import enum
import re

__all__ = [
    "ENHANCED",
    "PROVIDERS",
    "TEXT_RULES",
    "Category",
    "ProviderRules",
    "Rule",
]


class Category(enum.StrEnum):
    """What a reply means for the recipient, the message and our reputation."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    BLOCKED = "blocked"
    THROTTLED = "throttled"


C = Category


@dataclasses.dataclass(frozen=True)
class Rule:
    """A pattern searched case-insensitively in the one-line reply text."""

    pattern: re.Pattern[str]
    category: Category
    reason: str
    classes: str = "45"


def rule(pattern: str, category: Category, reason: str, classes: str = "45") -> Rule:
    """A compiled `Rule` (tables stay readable as plain calls)."""
    return Rule(re.compile(pattern, re.IGNORECASE), category, reason, classes)


@dataclasses.dataclass(frozen=True)
class ProviderRules:
    """One provider's table: its names, the marker that identifies its replies, its rules."""

    name: str
    aliases: frozenset[str]
    marker: re.Pattern[str] | None
    rules: tuple[Rule, ...]


def provider(
    name: str, aliases: tuple[str, ...], marker: str | None, *rules: Rule
) -> ProviderRules:
    """A provider table; `aliases` are the provider names callers may pass."""
    return ProviderRules(
        name=name,
        aliases=frozenset((name, *aliases)),
        marker=re.compile(marker, re.IGNORECASE) if marker else None,
        rules=rules,
    )


def _ptt_code(numbers: str) -> str:
    """A pattern for Orange/La Poste codes ending in one of `numbers` (OFR_416, LPN007_420)."""
    return rf"\b(?:OFR|LPN|OUK)(?:AAA)?\d*[_ ]?(?:{numbers})\b"


# Orange and La Poste share one platform and one code list (postmaster.orange.fr; Sisimai's
# FrancePTT table): the last three digits name the reason.
_FRANCE_PTT = (
    rule(_ptt_code("416"), C.HARD_BOUNCE, "Orange/La Poste 416: invalid recipient", "5"),
    rule(_ptt_code("417"), C.SOFT_BOUNCE, "Orange/La Poste 417: mailbox full"),
    rule(_ptt_code("420|426"), C.SOFT_BOUNCE, "Orange/La Poste: recipient archived or locked", "5"),
    rule(_ptt_code("514"), C.SOFT_BOUNCE, "Orange/La Poste 514: message too large"),
    rule(_ptt_code("505"), C.DEFERRED, "Orange/La Poste 505: temporary system error", "4"),
    rule(_ptt_code("104"), C.THROTTLED, "Orange/La Poste 104: too many connections", "4"),
    rule(_ptt_code("101|102|103|506|510|513|517|630"), C.BLOCKED,
         "Orange/La Poste: sender blocked (spam, reputation, DMARC)", "5"),
    rule(_ptt_code("305|401|402|403|405|415|421"), C.BLOCKED,
         "Orange/La Poste: sender or authentication refused"),
    rule(_ptt_code(r"\d{3}"), C.THROTTLED, "Orange/La Poste: service refused, try later", "4"),
    rule(_ptt_code(r"\d{3}"), C.BLOCKED, "Orange/La Poste: service refused", "5"),
)

PROVIDERS: tuple[ProviderRules, ...] = (
    provider("orange", ("wanadoo", "laposte", "francept"), r"\b(?:OFR|LPN|OUK)", *_FRANCE_PTT),
    provider(
        "sfr", ("neuf", "numericable"), r"SFR_IN_|\.sfr\.fr",
        rule(r"SFR_IN_\d0[12]", C.BLOCKED, "SFR: too much spam or a virus from this IP"),
        rule(r"SFR_IN_\d03|too many errors", C.DEFERRED, "SFR: too many SMTP errors", "4"),
        rule(r"SFR_IN_\d04", C.BLOCKED, "SFR: too many unknown recipients from this IP"),
        rule(r"SFR_IN_\d05", C.THROTTLED, "SFR: volume limit"),
    ),
    provider(
        "free", ("proxad", "aliceadsl"), r"free\.fr|proxad",
        rule(r"too many spams?|spam detected", C.BLOCKED, "Free: spam from this IP"),
    ),
    provider(
        "yahoo", ("aol", "verizon", "yahooinc", "att"), r"yahoo|\[TSS?\d\d\]|\baol\b",
        rule(r"\[TSS?\d\d\]", C.THROTTLED, "Yahoo deferral for volume or complaints", "4"),
        rule(r"\[TSS?\d\d\]|permanently deferred", C.BLOCKED, "Yahoo permanent deferral", "5"),
        rule(r"\bdd .*doesn't have an? [\w.]* account|no longer valid|mailbox is disabled",
             C.HARD_BOUNCE, "Yahoo: no such account", "5"),
        rule(r"unresolvable RFC\.?5321", C.DEFERRED, "Yahoo: sender domain did not resolve", "4"),
        rule(r"temporarily deferred", C.THROTTLED, "Yahoo temporary deferral", "4"),
        rule(r"\[PH\d\d\]|Message not allowed", C.BLOCKED, "Yahoo: content or policy", "5"),
    ),
    provider(
        "outlook", ("microsoft", "hotmail", "office365", "exchange"),
        r"outlook\.com|RESOLVER\.|STOREDRV|SMTPSEND|\b[45]\.7\.[5-9]\d\d\b|\(S\d{3,5}\)",
        rule(r"\b4\.7\.(?:[5-6]\d\d|8\d\d)\b", C.THROTTLED, "Microsoft: temporarily restricted",
             "4"),
        rule(r"\b5\.7\.50[45]\b", C.HARD_BOUNCE, "Microsoft: recipient address not valid", "5"),
        rule(r"\b5\.7\.508\b", C.THROTTLED, "Microsoft: sender exceeded its limits", "5"),
        rule(r"\b5\.7\.(?:5\d\d|6\d\d|7\d\d|9\d\d)\b|\bS3150\b|\bS3140\b", C.BLOCKED,
             "Microsoft: sender refused (ban, authentication, tenant)", "5"),
        rule(r"\b4\.7\.700\b|PFA agent busy", C.DEFERRED, "Microsoft: filter busy", "4"),
        rule(r"\b5\.2\.12[12]\b|thread limit exceeded|concurrent connections|queue quota",
             C.THROTTLED, "Microsoft: recipient or connection limit"),
    ),
    provider(
        "gmail", ("google", "googlemail", "gsuite"), r"gsmtp|support\.google\.com|\bGmail\b",
        rule(r"try again later, closing connection", C.THROTTLED, "Gmail: slow down", "4"),
    ),
    provider(
        "apple", ("icloud", "me.com", "mac.com"), r"icloud|apple\.com|\bme\.com",
        rule(r"\[(?:CS|HM[EO])\d+\]", C.BLOCKED, "Apple: rejected by local policy"),
    ),
    provider(
        "gmx", ("webde", "web.de", "unitedinternet", "1und1", "ionos"), r"Nemesis|gmx|web\.de",
        rule(r"policy restrictions|Nemesis ESMTP Service not available", C.BLOCKED,
             "GMX/Web.de: rejected by policy"),
    ),
    provider(
        "comcast", ("xfinity",), r"comcast",
        rule(r"\b(?:BL|ES)\d{6}\b", C.BLOCKED, "Comcast: block list"),
        rule(r"\bRL\d{6}\b", C.THROTTLED, "Comcast: rate limit"),
    ),
)

# What a reply says, most specific meaning first. Within a meaning, the 4xx/5xx split is in
# `classes`; a rule that does not apply to the reply's class is skipped, not decisive.
TEXT_RULES: tuple[Rule, ...] = (
    # Temporary trouble that names a DNS or system cause: nothing about us or the address.
    rule(r"temporary DNS|DNS query failed|DNS failure|unresolvable|temporar\w* (?:system|server) "
         r"(?:problem|error)|insufficient (?:disk|system)|failed to be replicated|"
         r"connection (?:refused|timed out|reset|closed|expired|dropped)",
         C.DEFERRED, "temporary DNS or system trouble", "4"),
    rule(r"gr[ae]y-?list", C.DEFERRED, "greylisting", "4"),
    # Limits: the receiver says what it is doing.
    rule(r"too many recipients", C.DEFERRED, "too many recipients in one transaction", "4"),
    rule(r"too many recipients", C.THROTTLED, "recipient limit exceeded", "5"),
    rule(r"rate[- ]?limit|too many (?:connections|sessions|login|messages|mails|emails)|"
         r"receiving (?:e-?)?mail (?:too quickly|at a rate)|too quickly|excessive volume|"
         r"try again slower|slow down|max(?:imum)? (?:number of )?(?:message|connection)s? "
         r"(?:per connection )?(?:reached|exceeded)|exceeded the maximum number of connections|"
         r"sending limit|(?:relay|sending) limit exceeded|limit exceeded for|per hour|"
         r"exceeded permitted limits|quota for sending|throttl",
         C.THROTTLED, "rate limited"),
    rule(r"too many (?:errors|unrecognized|unauthenticated)", C.DEFERRED, "session errors", "4"),
    # Mailbox full, in every language we have seen.
    rule(r"over ?quota|quota (?:exceeded|violation|limit exceeded)|user quota|mailbox (?:is )?full|"
         r"mailbox size limit|out of storage space|exceeded storage allocation|"
         r"boite du destinataire pleine|speicherplatz",
         C.SOFT_BOUNCE, "mailbox full"),
    # The sender's side: authentication, identity, DNS of our domain, TLS, protocol.
    rule(r"\bSPF\b|\bDKIM\b|\bDMARC\b|unauthenticated|not authenticated|authentication "
         r"(?:is )?(?:required|failure|requise)|authentification|authenticate|\bPTR\b|reverse "
         r"(?:DNS|hostname)|\bHELO\b|\bEHLO\b|sender address rejected|invalid sender|"
         r"emetteur invalide|sender (?:address|domain)|domain of sender|MailFrom domain|"
         r"not allowed to send|mail from not owned|STARTTLS|TLS (?:required|connection)|"
         r"spoof|invalid DNS|credentials|not authorized to send|username and password|"
         r"allowed-senders|outbound sender|due to abuse|abuse detected",
         C.BLOCKED, "sender authentication or identity refused"),
    rule(r"syntax error|bad sequence|unrecognized command|send hello first|out of sequence|"
         r"protocol violation|pipelin|unimplemented command",
         C.BLOCKED, "our protocol error", "5"),
    rule(r"protocol violation", C.DEFERRED, "protocol error, will retry", "4"),
    # Recipient-side routing that is not about the address's existence.
    rule(r"message expired|delivery time expired", C.SOFT_BOUNCE, "expired in transit", "5"),
    rule(r"relay(?:ing)? (?:access )?(?:denied|disallowed|not permitted|not allowed)|unable to "
         r"relay|as a relay|relay access", C.SOFT_BOUNCE, "relay refused", "5"),
    # The address does not exist (checked before block words: "Recipient address rejected:
    # Access denied" is Microsoft's unknown-recipient answer, "No such user!" comes with 5.7.1).
    rule(r"user unknown|unknown user|no such (?:user|mailbox|recipient|address|domain)|"
         r"(?:does not|doesn't|not) exist|mailbox not found|recipient not found|"
         r"RecipientNotFound|ExRecipNotFound|recipient address rejected: access denied|"
         r"invalid[- ](?:recipient|mailbox)|not a valid (?:email|RFC.?5321) address|"
         r"not our customer|mailbox unallocated|addressee unknown|invalid address, relay|"
         r"marked as invalid|not in recipient list|destinataire invalide|inactive|"
         r"(?:account|mailbox) (?:is )?disabled|no longer (?:valid|on server)|has been replaced|"
         r"host unknown|domain is not reachable|find the recipient domain|nonexistent domain|"
         r"illegal alias|banned recipient|mailbox unavailable|unrouteable|"
         r"utilisateur inconnu|adresse (?:inconnue|invalide)|unbekannt",
         C.HARD_BOUNCE, "address does not exist", "5"),
    # Block lists, reputation, content: the receiver refuses us.
    rule(r"spamhaus|spamcop|sorbs|uceprotect|cloudmark|senderscore|proofpoint|barracuda|"
         r"block ?list|black ?list|blocked|bloquee?s?\b|\bDNSBL|\bRBL\b|listed|reputation|"
         r"spam|virus|phish|malware|banned|security (?:issue|polic)|quarantin|polic(?:y|ies)|"
         r"prohibit|not accepted|rejet|refused|denied|envelope blocked|filtered|"
         r"RFC ?5322|RFC compliant|malformed|duplicate header|improperly|encoded-word|"
         r"unicode character|missing a valid|multiple addresses|abuse|user reject|"
         r"whitelist|not accepting connections|a problem occurred",
         C.BLOCKED, "block list, reputation or content policy"),
    rule(r"message (?:is )?too (?:big|large)|size (?:limit|exceeds)|exceeds? .*size|"
         r"size limits|taille limite", C.SOFT_BOUNCE, "message too large"),
    rule(r"hop count|too many hops|loop|expired", C.SOFT_BOUNCE, "loop or expired in transit", "5"),
    rule(r"suspend|locked|archiv", C.SOFT_BOUNCE, "mailbox suspended", "5"),
)

# RFC 3463 codes, read after the texts: (class, subject, detail or None) -> category, reason.
ENHANCED: tuple[tuple[tuple[int, int, int | None], Category, str], ...] = (
    ((5, 1, 7), C.BLOCKED, "bad sender address"),
    ((5, 1, 8), C.BLOCKED, "bad sender domain"),
    ((5, 1, 0), C.SOFT_BOUNCE, "address problem"),
    ((5, 1, None), C.HARD_BOUNCE, "bad destination address"),
    ((5, 2, 1), C.HARD_BOUNCE, "mailbox disabled"),
    ((5, 2, None), C.SOFT_BOUNCE, "mailbox problem"),
    ((5, 3, None), C.SOFT_BOUNCE, "remote mail system problem"),
    ((5, 4, 4), C.HARD_BOUNCE, "unable to route to the domain"),
    ((5, 4, None), C.SOFT_BOUNCE, "network or routing problem"),
    ((5, 5, None), C.BLOCKED, "our protocol error"),
    ((5, 6, None), C.BLOCKED, "message content or media refused"),
    ((5, 7, None), C.BLOCKED, "security or policy rejection"),
    ((4, 2, 2), C.SOFT_BOUNCE, "mailbox full (temporary)"),
)
