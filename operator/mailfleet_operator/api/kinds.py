"""The registry of the three kinds: names, models, printer columns, subresources.

Pure data (no I/O). The CRD generator, the API reference, the operator's handlers and the
sandbox all read names from here rather than spelling "sendingpools" themselves.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import BaseModel

from mailfleet_operator.api import common, domainauth, ipwarmup, sendingpool


@dataclasses.dataclass(frozen=True)
class PrinterColumn:
    """One `kubectl get` column (additionalPrinterColumns)."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str
    priority: int = 0


@dataclasses.dataclass(frozen=True)
class ScaleSubresource:
    """Paths of the scale subresource (`kubectl scale`, HorizontalPodAutoscaler)."""

    spec_replicas_path: str
    status_replicas_path: str
    label_selector_path: str


@dataclasses.dataclass(frozen=True)
class KindInfo:
    """Everything about one kind that is not a field of its schema."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    model: type[BaseModel]
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    printer_columns: tuple[PrinterColumn, ...]
    condition_types: tuple[str, ...]
    scale: ScaleSubresource | None = None
    group: str = common.GROUP
    version: str = common.VERSION
    categories: tuple[str, ...] = (common.CATEGORY,)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def crd_name(self) -> str:
        """`sendingpools.mailfleet.io`: the CRD's metadata.name."""
        return f"{self.plural}.{self.group}"

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


def _ready_column(description: str) -> PrinterColumn:
    return PrinterColumn(
        name="Ready",
        type="string",
        json_path='.status.conditions[?(@.type=="Ready")].status',
        description=description,
    )


_AGE = PrinterColumn(
    name="Age",
    type="date",
    json_path=".metadata.creationTimestamp",
    description="Time since the object was created.",
)

SENDING_POOL = KindInfo(
    kind=sendingpool.KIND,
    plural=sendingpool.PLURAL,
    singular=sendingpool.SINGULAR,
    short_names=sendingpool.SHORT_NAMES,
    model=sendingpool.SendingPool,
    spec_model=sendingpool.SendingPoolSpec,
    status_model=sendingpool.SendingPoolStatus,
    condition_types=sendingpool.CONDITION_TYPES,
    printer_columns=(
        _ready_column("Whether the pool is sending (Ready condition)."),
        PrinterColumn(
            name="Active IPs",
            type="integer",
            json_path=".status.activeIPs",
            description="Egress IPs currently sending.",
        ),
        PrinterColumn(
            name="Queue",
            type="integer",
            json_path=".status.queueDepth",
            description="Messages queued over every class.",
        ),
        PrinterColumn(
            name="Replicas",
            type="integer",
            json_path=".status.readyReplicas",
            description="Ready active sender pods.",
            priority=1,
        ),
        _AGE,
    ),
    scale=ScaleSubresource(
        spec_replicas_path=".spec.replicas",
        status_replicas_path=".status.replicas",
        label_selector_path=".status.selector",
    ),
)

IP_WARMUP = KindInfo(
    kind=ipwarmup.KIND,
    plural=ipwarmup.PLURAL,
    singular=ipwarmup.SINGULAR,
    short_names=ipwarmup.SHORT_NAMES,
    model=ipwarmup.IPWarmup,
    spec_model=ipwarmup.IPWarmupSpec,
    status_model=ipwarmup.IPWarmupStatus,
    condition_types=ipwarmup.CONDITION_TYPES,
    printer_columns=(
        PrinterColumn(
            name="Phase", type="string", json_path=".status.phase", description="Warm-up phase."
        ),
        PrinterColumn(
            name="Day", type="integer", json_path=".status.day", description="Current day."
        ),
        PrinterColumn(
            name="Quota",
            type="integer",
            json_path=".status.dailyQuota",
            description="Messages allowed per IP today.",
        ),
        PrinterColumn(
            name="Sent today",
            type="integer",
            json_path=".status.sentToday",
            description="Messages sent today.",
        ),
        PrinterColumn(
            name="Pool",
            type="string",
            json_path=".spec.poolRef.name",
            description="The SendingPool being warmed up.",
            priority=1,
        ),
        _AGE,
    ),
)

DOMAIN_AUTH = KindInfo(
    kind=domainauth.KIND,
    plural=domainauth.PLURAL,
    singular=domainauth.SINGULAR,
    short_names=domainauth.SHORT_NAMES,
    model=domainauth.DomainAuth,
    spec_model=domainauth.DomainAuthSpec,
    status_model=domainauth.DomainAuthStatus,
    condition_types=domainauth.CONDITION_TYPES,
    printer_columns=(
        PrinterColumn(
            name="Domain", type="string", json_path=".spec.domain", description="Sending domain."
        ),
        PrinterColumn(
            name="Active selector",
            type="string",
            json_path=".status.activeSelector",
            description="DKIM selector senders sign with.",
        ),
        _ready_column("Whether every record is published and verified (Ready condition)."),
        _AGE,
    ),
)

KINDS: tuple[KindInfo, ...] = (SENDING_POOL, IP_WARMUP, DOMAIN_AUTH)
BY_KIND: dict[str, KindInfo] = {info.kind: info for info in KINDS}
BY_PLURAL: dict[str, KindInfo] = {info.plural: info for info in KINDS}
