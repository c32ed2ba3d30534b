"""Operator-wide kopf hooks: settings at startup, API login, the shared client, cleanup.

kopf keeps its handler progress and diff-base in `mailfleet.io/` annotations, not in status,
so our status schemas stay strict (the CRDs do not preserve unknown fields under status).
The same `kube.config.Connection` serves kopf's login and our client, so both talk to the
same server with the same identity.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from mailfleet_operator import settings as settings_module
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import config as kube_config
from mailfleet_operator.reconcile import context

ANNOTATION_PREFIX = "mailfleet.io"
FINALIZER = "mailfleet.io/finalizer"


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf settings we rely on (applied at startup; exposed for tests)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
    # Our own events describe transitions; kopf's per-handler INFO lines would bury them.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 4
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_kopf(settings)
    operator_settings: settings_module.Settings = memo.settings
    connection: kube_config.Connection = memo.connection
    client = kube_client.Client(connection)
    await client.open()
    memo.ctx = context.Context(
        client=client,
        settings=operator_settings,
        clock=memo.get("clock") or settings_module.Clock(operator_settings.time_scale),
        leadership=memo.get("leadership"),  # set by running.py when elections are on
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    ctx: context.Context | None = memo.get("ctx")
    if ctx is not None:
        await ctx.client.close()


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """Called at start and again by kopf after a 401: the token file is read each time (a
    service-account token rotates, see `kube.config`)."""
    connection: kube_config.Connection = memo.connection
    return kopf.ConnectionInfo(
        server=connection.server,
        ca_data=connection.ca_data,
        insecure=connection.insecure,
        token=kube_config.current_token(connection),
        certificate_data=connection.client_cert_data,
        private_key_data=connection.client_key_data,
        default_namespace=connection.default_namespace,
        scheme="Bearer" if connection.token else None,
    )
