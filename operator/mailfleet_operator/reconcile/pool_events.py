"""What a SendingPool's events need from the world (I/O): which keys the Secrets of
`spec.events` and `spec.tracking` hold.

Only the names of a Secret's keys are kept, never their values: the senders read the
values from their mounts. The rendering (`logic.event_config`) leaves out a webhook whose
Secret lacks its key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import resources
from mailfleet_operator.logic import event_config
from mailfleet_operator.reconcile import context as ctx_module

log = logging.getLogger(__name__)


def secret_keys(secret: Mapping[str, Any] | None) -> frozenset[str] | None:
    """The keys a Secret holds (`data` and not yet stored `stringData`); None: no Secret."""
    if secret is None:
        return None
    return frozenset((secret.get("data") or {}).keys()) | frozenset(
        (secret.get("stringData") or {}).keys()
    )


async def read_secret_keys(
    ctx: ctx_module.Context,
    namespace: str,
    wanted: Sequence[str],
    previous: event_config.SecretKeys,
) -> dict[str, frozenset[str] | None]:
    """name -> its keys (None: missing). A Secret the API does not let us read keeps what was
    last known of it (a failed read must not drop a webhook); never known, it counts as
    missing: the webhook stays out until it can be checked."""
    found: dict[str, frozenset[str] | None] = {}
    for name in wanted:
        try:
            secret = await ctx.client.get(resources.SECRETS, name=name, namespace=namespace)
        except kube_client.ApiError as error:
            log.info("event secret unreadable",
                     extra={"secret": f"{namespace}/{name}", "error": str(error)[:200]})
            found[name] = previous.get(name)
            continue
        found[name] = secret_keys(secret)
    return found
