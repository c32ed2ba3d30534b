"""What every reconciler gets: the API client, the settings, the clock; and what it returns.

Shared by the DomainAuth, SendingPool and IPWarmup controllers so that handlers stay thin:
a handler builds nothing, it passes the `Context` it was given at startup.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol

from mailfleet_operator import settings as settings_module
from mailfleet_operator.kube import client as kube_client


class Leadership(Protocol):
    """The operator's leader election as the controllers see it (`leadership.Leadership`)."""

    def is_leading(self) -> bool: ...

    def leading_since(self) -> float | None: ...


@dataclasses.dataclass(frozen=True)
class Context:
    client: kube_client.Client
    settings: settings_module.Settings
    clock: settings_module.Clock
    # None: this process acts alone (tests, a single replica without election).
    leadership: Leadership | None = None


def leading(ctx: Context) -> bool:
    """Whether this replica may act: the elected leader (or one acting alone). Followers
    watch and wait, so two replicas never write the same objects."""
    return ctx.leadership is None or ctx.leadership.is_leading()


FOLLOWER_DELAY = 2.0
"""Seconds a follower waits before looking again (it acts only once it leads)."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Result of one reconcile: when (real seconds from now) the object wants another look."""

    requeue_after: float
    changed: bool = False


class _ObjectAdapter(logging.LoggerAdapter[logging.Logger]):
    """Merges the object's fields with per-call `extra` (the stock adapter drops the latter)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def object_logger(kind: str, body: dict[str, Any]) -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose records carry the object's kind, namespace and name as fields."""
    metadata = body.get("metadata", {})
    return _ObjectAdapter(
        logging.getLogger(f"mailfleet_operator.{kind.lower()}"),
        {"kind": kind, "namespace": metadata.get("namespace"), "object": metadata.get("name")},
    )
