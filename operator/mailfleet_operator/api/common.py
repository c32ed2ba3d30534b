"""Building blocks shared by the three kinds: base models, string formats, Condition, refs.

Pure (no I/O). Every format here is checked twice on purpose: by a pydantic validator with a
message a user can act on, and by an OpenAPI `pattern`/`enum`/bound in the generated CRD so
the API server refuses the same input before the operator ever sees it. Patterns stay in the
regex subset the API server accepts (no look-arounds, no back-references).

Conventions for the models of this package:
- YAML/JSON field names are camelCase (alias generator); Python code may use snake_case.
- Spec models reject unknown fields (`SpecModel`, extra="forbid"): a typo is an error with
  the path of the bad field, never silently ignored.
- Status models ignore unknown fields (`StatusModel`): an older operator must still read the
  status a newer one wrote. Dump them with `dump_status(model)`.
- Every field has a description: it is the `kubectl explain` text and the API reference.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any, ClassVar, Literal, Self

from mailfleet_sender import units
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import core_schema

GROUP = "mailfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "mailfleet"

# Re-exported so model modules and other helpers import one place for formats.
Duration = units.Duration
RateStr = units.RateStr


# --- rules checked at the door ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """A rule written once and checked twice, with one message: by the API server as a CEL
    `x-kubernetes-validations` rule of the generated CRD (`kubectl apply` refuses), and by
    pydantic with `holds` (the operator refuses, e.g. on a cluster whose CRDs are older).

    `cel` and `holds` state the same condition of `self`: the model a rule is listed on
    (`SpecModel.rules`) or the value of a field annotated with it
    (`Annotated[str, Rule(...)]`). The unit tests run every refused case through both
    (tests/unit/api/test_door_rules.py), the integration tests through kube-apiserver.
    Messages are fixed text: kube-apiserver shows the field path before it, as
    `describe_errors` does.
    """

    cel: str
    message: str
    holds: Callable[[Any], bool] = dataclasses.field(compare=False)
    max_length: int | None = None
    """For string fields: a `maxLength` too, so the API server can bound the rule's cost."""

    def check(self, value: Any) -> Any:
        if self.max_length is not None and len(value) > self.max_length:
            raise ValueError(f"at most {self.max_length} characters allowed")
        if not self.holds(value):
            raise ValueError(self.message)
        return value

    def validation(self) -> dict[str, str]:
        """The `x-kubernetes-validations` entry."""
        return {"rule": self.cel, "message": self.message}

    # As field metadata (`Annotated[T, rule]`): validate after T, add the CEL rule to T's schema.
    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        json = dict(handler(schema))
        if self.max_length is not None:
            json["maxLength"] = self.max_length
        json["x-kubernetes-validations"] = [
            *json.get("x-kubernetes-validations", []),
            self.validation(),
        ]
        return json


def _rules_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """`json_schema_extra` of every spec model: its `rules` become CEL rules in the CRD."""
    rules: tuple[Rule, ...] = getattr(cls, "rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [
            *schema.get("x-kubernetes-validations", []),
            *(rule.validation() for rule in rules),
        ]


class SpecModel(BaseModel):
    """Base of everything a user writes: camelCase, strict about unknown fields.

    Cross-field rules are listed in `rules` (checked in order, the first broken one is
    reported), never written as free-standing validators, so each has its CEL twin.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=_rules_schema,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).rules:
            rule.check(self)
        return self


class StatusModel(BaseModel):
    """Base of everything the operator writes: camelCase, tolerant of fields it does not know."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


def dump_status(model: BaseModel) -> dict[str, Any]:
    """The camelCase JSON dict to patch into `.status` (unset optional fields left out)."""
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def dump_spec(model: BaseModel) -> dict[str, Any]:
    """The camelCase JSON dict of a spec, defaults filled in (what the operator acts on)."""
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


# --- string formats ---------------------------------------------------------------------------


def _checker(
    name: str, check: Callable[[str], bool], expected: str, *, max_length: int | None = None
) -> BeforeValidator:
    """A validator for a string format whose message says what was expected."""

    def validate(value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}: expected {expected}")
        if max_length is not None and len(value) > max_length:
            raise ValueError(
                f"{name} {value!r} is {len(value)} characters long, at most {max_length} allowed"
            )
        if not check(value):
            raise ValueError(f"invalid {name} {value!r}: expected {expected}")
        return value

    return BeforeValidator(validate)


def _pattern(pattern: str, *, max_length: int | None = None) -> WithJsonSchema:
    """The same format for the API server: a string `pattern` (and length bound)."""
    schema: dict[str, Any] = {"type": "string", "pattern": pattern}
    if max_length is not None:
        schema["maxLength"] = max_length
    return WithJsonSchema(schema)


def _regex_check(pattern: str) -> Callable[[str], bool]:
    compiled = re.compile(pattern)
    return lambda value: compiled.fullmatch(value) is not None


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"({_OCTET}\.){{3}}{_OCTET}"
_IPV6 = r"[0-9A-Fa-f]{0,4}(:[0-9A-Fa-f]{0,4}){2,7}"
IP_PATTERN = rf"^({_IPV4}|{_IPV6})$"
_V4_PREFIX = r"(/([0-9]|[12][0-9]|3[0-2]))?"
_V6_PREFIX = r"(/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8]))?"
CIDR_PATTERN = rf"^({_IPV4}{_V4_PREFIX}|{_IPV6}{_V6_PREFIX})$"
_DNS_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
DOMAIN_PATTERN = rf"^({_DNS_LABEL}\.)+[A-Za-z]([-A-Za-z0-9]{{0,61}}[A-Za-z0-9])?$"
# Names that only hold records (SPF includes such as _spf.google.com) may have labels
# starting with an underscore (RFC 8552); host names may not.
_RECORD_LABEL = r"_?[A-Za-z0-9]([-_A-Za-z0-9]{0,61}[A-Za-z0-9])?"
RECORD_NAME_PATTERN = rf"^({_RECORD_LABEL}\.)+[A-Za-z]([-A-Za-z0-9]{{0,61}}[A-Za-z0-9])?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
KUBE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
MX_PATTERN_PATTERN = rf"^(\*\.)?({_DNS_LABEL}\.)*{_DNS_LABEL}$"
HTTPS_URL_PATTERN = r"^https://[^\s/?#]+(/[^\s]*)?$"
MAILTO_PATTERN = r"^mailto:[^@\s,!]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}(![0-9]+[kmgt]?)?$"
# The canonical form of a Kubernetes quantity (k8s.io/apimachinery resource.Quantity).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
CONDITION_TYPE_PATTERN = r"^[A-Z][A-Za-z0-9]*$"
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


def _is_ip(value: str) -> bool:
    if not re.fullmatch(IP_PATTERN, value):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_ip_or_cidr(value: str) -> bool:
    if not re.fullmatch(CIDR_PATTERN, value):
        return False
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


IPAddress = Annotated[
    str,
    _checker(
        "IP address",
        _is_ip,
        "an IPv4 address like 203.0.113.10 or an IPv6 address like 2001:db8::10",
    ),
    _pattern(IP_PATTERN),
]
"""An IPv4 or IPv6 address in its usual text form, kept as written."""

IPOrCIDR = Annotated[
    str,
    _checker(
        "IP address or network",
        _is_ip_or_cidr,
        "an IP address (203.0.113.10, 2001:db8::10) or a network in CIDR form (203.0.113.0/24)",
    ),
    _pattern(CIDR_PATTERN),
]
"""An IP address or a CIDR network ("203.0.113.0/24")."""

DomainName = Annotated[
    str,
    _checker(
        "domain name",
        _regex_check(DOMAIN_PATTERN),
        "a fully qualified domain name like mail.example.com (letters, digits and hyphens, "
        "dot-separated labels of at most 63 characters, no trailing dot)",
        max_length=253,
    ),
    _pattern(DOMAIN_PATTERN, max_length=253),
]
"""A fully qualified DNS name without the trailing dot ("mail.example.com")."""

RecordName = Annotated[
    str,
    _checker(
        "DNS record name",
        _regex_check(RECORD_NAME_PATTERN),
        "a fully qualified DNS name like _spf.google.com (labels of letters, digits, '-' and "
        "'_', a label may start with '_', no trailing dot)",
        max_length=253,
    ),
    _pattern(RECORD_NAME_PATTERN, max_length=253),
]
"""A DNS name that holds records, where labels may start with '_' ("_spf.google.com")."""

DNSLabel = Annotated[
    str,
    _checker(
        "DNS label",
        _regex_check(DNS_LABEL_PATTERN),
        "lower-case letters, digits and '-', starting and ending with a letter or digit",
        max_length=63,
    ),
    _pattern(DNS_LABEL_PATTERN, max_length=63),
]
"""One lower-case DNS label ("mf", "transactional")."""

KubeName = Annotated[
    str,
    _checker(
        "object name",
        _regex_check(KUBE_NAME_PATTERN),
        "a Kubernetes object name: lower-case letters, digits, '-' and '.', starting and "
        "ending with a letter or digit",
        max_length=253,
    ),
    _pattern(KUBE_NAME_PATTERN, max_length=253),
]
"""A Kubernetes object name (DNS-1123 subdomain)."""

MXPattern = Annotated[
    str,
    _checker(
        "MX host pattern",
        _regex_check(MX_PATTERN_PATTERN),
        "an MX host name, optionally starting with '*.' to match every host below it, "
        "e.g. '*.google.com' or 'mx1.example.net'",
        max_length=253,
    ),
    _pattern(MX_PATTERN_PATTERN, max_length=253),
]
"""An MX host name or a "*.suffix" wildcard matching every host below the suffix."""

HttpsURL = Annotated[
    str,
    _checker(
        "HTTPS URL",
        _regex_check(HTTPS_URL_PATTERN),
        "an absolute https:// URL, e.g. https://example.com/bimi/logo.svg",
        max_length=2048,
    ),
    _pattern(HTTPS_URL_PATTERN, max_length=2048),
]

MailtoURI = Annotated[
    str,
    _checker(
        "mailto URI",
        _regex_check(MAILTO_PATTERN),
        "a DMARC report URI like mailto:dmarc-reports@example.com (optionally with a size "
        "limit suffix such as !10m)",
        max_length=512,
    ),
    _pattern(MAILTO_PATTERN, max_length=512),
]


# --- durations with a floor -------------------------------------------------------------------

DURATION_MAX_LENGTH = 64
"""Long enough for any sensible duration; bounded so the CEL rules' cost is bounded."""

# Seconds per unit of `units.DURATION_PATTERN`; the CEL rule below spells the same table.
_UNIT_SECONDS = units.UNIT_SECONDS
_SEGMENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")


def duration_sum(text: str) -> float:
    """Seconds of a duration, added up segment by segment exactly as the CEL rule does."""
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _SEGMENT.findall(text))


def _cel_unit_seconds(var: str) -> str:
    # "ms" before "s" and "m": "500ms" ends with both.
    order = ("ms", "s", "m", "h", "d")
    chain = " : ".join(f"{var}.endsWith('{u}') ? {_UNIT_SECONDS[u]!r}" for u in order)
    return f"({chain} : {_UNIT_SECONDS['w']!r})"


# Kubernetes CEL's duration() reads Go durations (no days or weeks), so the rule adds the
# segments up itself: findAll (regex library), double(), sum() (lists library).
CEL_DURATION_SECONDS = (
    "self.findAll('[0-9]+([.][0-9]+)?(ms|s|m|h|d|w)')"
    f".map(p, double(p.find('^[0-9]+([.][0-9]+)?')) * {_cel_unit_seconds('p')}).sum()"
)


def at_least(minimum: str) -> Rule:
    """For `Annotated[Duration, at_least("10s")]`: refuse values shorter than `minimum` ("0s"
    for a polling interval would spin, "1s" for a key rotation would churn DNS)."""
    floor = units.duration_seconds(minimum)
    return Rule(
        cel=f"{CEL_DURATION_SECONDS} >= {floor!r}",
        message=f"must be at least {minimum}",
        holds=lambda value: duration_sum(value) >= floor,
        max_length=DURATION_MAX_LENGTH,
    )


# --- addresses mail may leave from --------------------------------------------------------------

# Unspecified (0.0.0.0, ::), limited broadcast and multicast (224.0.0.0/4, ff00::/8): no
# socket sends mail from them. Anchored, so CEL's matches() and re.fullmatch agree.
NOT_A_SOURCE_PATTERN = (
    r"^(0[.]0[.]0[.]0|255[.]255[.]255[.]255|(22[4-9]|23[0-9])[.].*|[0:]+"
    r"|[fF][fF][0-9A-Fa-f]{2}:.*)$"
)
SOURCE_ADDRESS_RULE = Rule(
    cel=f"!self.matches('{NOT_A_SOURCE_PATTERN}')",
    message=(
        "not an address mail can be sent from: unspecified (0.0.0.0, ::), broadcast "
        "(255.255.255.255) and multicast addresses are refused"
    ),
    holds=lambda value: re.fullmatch(NOT_A_SOURCE_PATTERN, value) is None,
    max_length=45,  # the longest IPv6 text form
)

SourceAddress = Annotated[IPAddress, SOURCE_ADDRESS_RULE]
"""An IP address a socket can send from (loopback is left to the operator's settings)."""


def unique_items(what: str) -> Rule:
    """A list rule refusing repeated entries (lists the API server cannot key as a set)."""
    return Rule(
        cel="self.all(x, self.exists_one(y, y == x))",
        message=f"duplicate {what}: each must appear once",
        holds=lambda items: len(set(items)) == len(items),
    )


def _validate_quantity(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"invalid quantity {value!r}: expected a number or a string like '500m'")
    if isinstance(value, str) and not re.fullmatch(QUANTITY_PATTERN, value):
        raise ValueError(
            f"invalid quantity {value!r}: expected a Kubernetes quantity like '500m', '1', "
            "'256Mi' or '2Gi'"
        )
    return value


Quantity = Annotated[
    int | str,
    BeforeValidator(_validate_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes resource quantity ("500m", "256Mi", 2), as in a container's resources."""


def _unique(what: str, key: Callable[[Any], Any]) -> Callable[[list[Any]], list[Any]]:
    """A list validator refusing duplicates, naming the first repeated key."""

    def check(items: list[Any]) -> list[Any]:
        seen: set[Any] = set()
        for item in items:
            value = key(item)
            if value in seen:
                raise ValueError(f"duplicate {what} {value!r}: each must appear once")
            seen.add(value)
        return items

    return check


def unique_by(what: str, key: Callable[[Any], Any] = lambda item: item) -> AfterValidator:
    """Annotate a list so repeated entries (by `key`) are refused with a clear message."""
    return AfterValidator(_unique(what, key))


# --- references --------------------------------------------------------------------------------


class LocalObjectReference(SpecModel):
    """A reference to an object in the same namespace, by name."""

    name: KubeName = Field(description="Name of the object, in the same namespace.")


class SecretKeyRef(SpecModel):
    """A Secret in the same namespace, and optionally one key inside it."""

    name: KubeName = Field(description="Name of the Secret, in the same namespace.")
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=SECRET_KEY_PATTERN,
        description=(
            "Key inside the Secret. When omitted, the key documented for the field that "
            "holds this reference is used."
        ),
    )


# --- conditions --------------------------------------------------------------------------------

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StatusModel):
    """One aspect of the object's state, following the Kubernetes API conventions.

    `lastTransitionTime` changes only when `status` flips; `reason` is a CamelCase word a
    script can match on, `message` the sentence a human reads.
    """

    type: str = Field(
        pattern=CONDITION_TYPE_PATTERN,
        max_length=316,
        description="Type of condition in CamelCase, e.g. Ready, Degraded, DKIMReady.",
    )
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: str = Field(
        pattern=CONDITION_REASON_PATTERN,
        min_length=1,
        max_length=1024,
        description=(
            "Programmatic identifier of the reason for the condition's last transition, in "
            "CamelCase, e.g. AllReplicasReady or Blocklisted."
        ),
    )
    message: str = Field(
        default="",
        max_length=32768,
        description="Human-readable details about the transition; may be empty.",
    )
    last_transition_time: datetime.datetime = Field(
        description="When the condition last changed from one status to another (RFC 3339).",
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description=(
            "The .metadata.generation the condition was set from; when older than the "
            "object's generation the condition is stale."
        ),
    )


Conditions = Annotated[list[Condition], unique_by("condition type", lambda c: c.type)]


def find_condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    """The condition of the given type, if present."""
    return next((c for c in conditions if c.type == type_), None)


# --- errors ------------------------------------------------------------------------------------


def error_path(loc: tuple[int | str, ...], *, prefix: str = "") -> str:
    """`("egress", "ips", 1, "address")` -> "spec.egress.ips[1].address" (with prefix "spec")."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "constrained-")) or part in {"str", "int"}:
            continue  # pydantic's internal validator steps, not fields
        else:
            path += f".{part}" if path else part
    return path or "(root)"


def describe_errors(exc: ValidationError, *, prefix: str = "") -> list[str]:
    """One "path: message" line per problem, as shown in conditions, events and CLI output."""
    lines = []
    for error in exc.errors(include_url=False):
        message = str(error["msg"])
        message = message.removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; field names are camelCase)"
        lines.append(f"{error_path(tuple(error['loc']), prefix=prefix)}: {message}")
    return lines
