"""Open and click tracking settings of the sender's config (docs/tracking.md): the pool-wide
`tracking` section and the per-class `classes[].tracking` switches. Pure (no I/O).

Apart from `config` so that module stays readable; `config` refers to these models and calls
`check` for the rules that span sections. Tracking is off unless a class asks for it: a class
without `tracking` is never rewritten, whatever the pool-wide section says.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from mailfleet_sender import hostnames, units

DEFAULT_MACHINE_USER_AGENTS = (
    "GoogleImageProxy",  # Gmail fetches every image through its proxy (ggpht.com)
    "YahooMailProxy",  # Yahoo and AOL
    r"^Mozilla/5\.0$",  # Apple Mail Privacy Protection's prefetch sends this bare agent
    "Barracuda",  # link and attachment scanners of mail gateways:
    "Mimecast",
    "Proofpoint",
)
"""Regular expressions (case-insensitive, searched anywhere in the User-Agent) of fetchers
that load every pixel or follow every link whether or not a person reads the mail."""
MAX_USER_AGENT_PATTERNS = 100


class _Model(BaseModel):
    """As `config.ConfigModel` (camelCase keys, unknown keys refused): that module imports
    this one, so the base cannot come from there."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ClassTracking(_Model):
    """`classes[].tracking`: what a class's HTML mail gets at submission. Both off by
    default, for transactional and marketing classes alike."""

    opens: bool = Field(default=False, description="Add an open pixel to HTML parts.")
    clicks: bool = Field(
        default=False, description="Rewrite http(s) links of HTML parts to the tracking host."
    )

    @property
    def on(self) -> bool:
        return self.opens or self.clicks


class Tracking(_Model):
    """The pool's tracking host and key, and how machine fetches are told apart."""

    host: str | None = Field(
        default=None,
        description=(
            "Host name of the tracking links (the pool's spec.tracking.host), routed to the "
            "pods' public listener; links become https://<host>/t/c/<token>."
        ),
    )
    base_url: str | None = Field(
        default=None,
        description=(
            "Scheme, host and port of tracking links when not https://<host> (no path: the "
            "routes are /t/o and /t/c at the root). http only on 127.x (tests)."
        ),
    )
    key_file: str | None = Field(
        default=None,
        description=(
            "HMAC keys of tracking tokens (a mounted Secret, this purpose only), one per line, "
            "each at least 16 bytes: the first signs, every line verifies (rotation: add the "
            "new key as a second line, move it first later, drop the old one only when links "
            "signed with it may be forgotten). Required with peers; a lone pod without it "
            "signs with a random key of its own, kept in its spool."
        ),
    )
    machine_user_agents: list[str] = Field(
        default_factory=lambda: list(DEFAULT_MACHINE_USER_AGENTS),
        max_length=MAX_USER_AGENT_PATTERNS,
        description=(
            "Regular expressions (case-insensitive search) of User-Agents that are machines "
            "(image proxies, link scanners): their opens and clicks are recorded with "
            "machine=true and never count as human. Replaces the built-in list when given."
        ),
    )
    machine_window: units.Duration = Field(
        default="3s",
        description=(
            "An open or click this soon after the message was submitted or (when this pod "
            "delivered it) delivered is a machine's: a scanner or a prefetching proxy "
            "reacting to the delivery, not a reader. 0s turns the rule off."
        ),
    )
    tls_cert_file: str | None = Field(
        default=None,
        description=(
            "PEM certificate chain for the tracking host: the public listener then speaks "
            "HTTPS itself (a TLS Secret mounted in the pod). Unset: plain HTTP, TLS ends at "
            "the Ingress or load balancer in front of the pods."
        ),
    )
    tls_key_file: str | None = Field(default=None, description="PEM key of tlsCertFile.")

    @field_validator("host")
    @classmethod
    def _host_is_a_name(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("[") or not hostnames.is_helo_name(value)):
            raise ValueError(f"{value!r} is not a host name")
        return None if value is None else value.rstrip(".").lower()

    @field_validator("base_url")
    @classmethod
    def _base_is_an_origin(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urllib.parse.urlsplit(value)
        loopback_http = parts.scheme == "http" and (parts.hostname or "").startswith("127.")
        if parts.scheme != "https" and not loopback_http:
            raise ValueError("must be an https:// URL (http only on 127.x, for tests)")
        if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be scheme://host[:port] only (the routes sit at the root)")
        if parts.username or parts.password:
            raise ValueError("must not carry user information")
        return f"{parts.scheme}://{parts.netloc}"

    @field_validator("machine_user_agents")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Tracking:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tlsCertFile and tlsKeyFile must be set together")
        return self

    @property
    def base(self) -> str | None:
        """Origin of tracking URLs: baseUrl, else https://<host>; None when neither is set."""
        if self.base_url is not None:
            return self.base_url
        return f"https://{self.host}" if self.host else None

    @property
    def machine_window_seconds(self) -> float:
        return units.duration_seconds(self.machine_window)


def check(tracking: Tracking, classes: Sequence[tuple[str, ClassTracking]], *,
          peers: bool) -> None:
    """Rules across sections (`config.SenderConfig` calls this): a class that tracks needs a
    host to send readers to, and pods of a pool must verify each other's tokens."""
    tracked = [name for name, switches in classes if switches.on]
    if not tracked:
        return
    if tracking.base is None:
        raise ValueError(
            f"classes {tracked} track opens or clicks: tracking.host (or baseUrl) is required"
        )
    if peers and tracking.key_file is None:
        raise ValueError(
            "tracking.keyFile required with peers: every pod of a pool must verify the "
            "tokens the others sign (mount the pool's tracking Secret)"
        )
