"""The `events` section of the sender's config (`SenderConfig.events`): the stdout stream,
the webhooks and their delivery settings, and which tag keys may become metric labels. Pure
(no I/O); kept apart from `config` so that module stays readable. Same conventions: camelCase
keys, unknown keys refused, every limit and timeout an explicit default.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from mailfleet_sender import events, tags, units


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def _loopback_http(url: str) -> bool:
    rest = url.removeprefix("http://")
    return rest != url and (rest.startswith("127.") or rest.startswith("localhost"))


class Webhook(_Model):
    """One HTTPS endpoint that receives signed batches of events (docs/events.md)."""

    name: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63,
        description="Names the webhook in metrics, /v1/stats and the Mailfleet-Webhook header.",
    )
    url: str = Field(description="https:// URL the batches are POSTed to.")
    types: list[events.EventType] = Field(
        default_factory=list, description="Event types sent; all when empty."
    )
    signing_key_file: str = Field(
        description="File with the HMAC-SHA256 key (a mounted Secret key); batches are never "
        "sent unsigned: without a readable key they wait.",
    )
    ca_file: str | None = Field(
        default=None, description="PEM CA bundle trusted besides the system store."
    )
    batch_max: int = Field(default=100, ge=1, le=10_000, description="Events per POST at most.")
    flush_interval: units.Duration = Field(
        default="1s", description="A batch not full is sent this long after its first event."
    )
    timeout: units.Duration = Field(default="10s", description="Per POST.")
    retry_first: units.Duration = Field(default="1s", description="First wait after a failure.")
    retry_max: units.Duration = Field(default="5m", description="Longest wait between tries.")
    retry_for: units.Duration = Field(
        default="24h",
        description="Events not delivered this long after they were recorded are dropped "
        "(counted in mailfleet_sender_events_dropped_total, logged).",
    )

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        """Signed, but still private data: https, or plain http on loopback (tests)."""
        if not (value.startswith("https://") or _loopback_http(value)):
            raise ValueError("must be an https:// URL (http:// only on loopback)")
        return value

    @model_validator(mode="after")
    def _retry_bounds(self) -> Webhook:
        if units.duration_seconds(self.retry_first) > units.duration_seconds(self.retry_max):
            raise ValueError("retryFirst must not exceed retryMax")
        return self

    @property
    def wants_all(self) -> bool:
        return not self.types


class Events(_Model):
    """Delivery events: one JSON line each on stdout, and signed webhooks."""

    stdout: bool = Field(default=True, description="Write one JSON line per event on stdout.")
    webhooks: list[Webhook] = Field(default_factory=list, description="Signed HTTPS receivers.")
    tag_metrics_allow: list[Annotated[str, StringConstraints(pattern=tags.KEY.pattern)]] = Field(
        default_factory=lambda: ["campaign"], max_length=10,
        description=(
            "Tag keys whose values the KPIs break out (/v1/stats, Prometheus labels); other "
            "keys are stored with the message but not broken out. Values per key are capped "
            "(kpis.tagValues): cardinality stays bounded."
        ),
    )
    tag_retention: units.Duration = Field(
        default="30d",
        description="How long a message's tags are kept after it left the queue, for the events "
        "that come later (complaints, opens, clicks).",
    )

    @field_validator("webhooks")
    @classmethod
    def _unique_names(cls, value: list[Webhook]) -> list[Webhook]:
        names = [w.name for w in value]
        if len(set(names)) != len(names):
            raise ValueError(f"webhook names must be unique: {names}")
        return value

    @field_validator("tag_metrics_allow")
    @classmethod
    def _tag_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            if not tags.KEY.match(key):
                raise ValueError(f"{key!r} is not a tag key")
        return value


class Kpis(_Model):
    """Bounds and persistence of the campaign KPIs (docs/kpis.md)."""

    tag_values: int = Field(
        default=100, ge=1, le=1000,
        description="Distinct values kept per allowed tag key; more are counted as _other.",
    )
    dimension_values: int = Field(
        default=256, ge=1, le=10_000,
        description="Distinct classes, providers and IPs kept; more are counted as _other.",
    )
    days: int = Field(default=8, ge=1, le=31, description="UTC days kept (today included).")
    unique_keys: int = Field(
        default=100_000, ge=1000, le=10_000_000,
        description="Opened/clicked (message, recipient) pairs remembered for unique counts.",
    )
    save_interval: units.Duration = Field(
        default="1m",
        description="How often the KPIs are saved to the spool (and on stop): what a crash "
        "can lose.",
    )
