"""Rendering `spec.events`, `spec.tracking` and `classes[].tracking` into the sender config's
`events`, `tracking` and `classes[].tracking` sections, with the Secrets they mount (pure).

Mounts: each webhook's signing key (and CA, when it names one) at
`/etc/mailfleet/events/<webhook>/` as the files `key` and `ca.crt`; the pool's generated
tracking key (and the tracking host's certificate) at `/etc/mailfleet/tracking/`. The user's
Secrets are mounted `optional`, so the pod template depends on the spec alone: a Secret
created or deleted later never rolls the pods.

Fail closed per webhook: a webhook whose signing key (or CA) Secret is missing, or lacks its
key, is left out of the rendered config (no unsigned or unverifiable delivery), and
EventsReady=False names it; other webhooks, stdout and all mail keep flowing. Secrets are
never read here, only their key names are given (`secrets`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailfleet_operator.api import pool_events
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.logic import children, pool_secrets

EVENTS_DIR = "/etc/mailfleet/events"
TRACKING_DIR = "/etc/mailfleet/tracking"
SIGNING_KEY_FILE = "key"
CA_FILE = "ca.crt"
TLS_FILES = ("tls.crt", "tls.key")
TRACKING_VOLUME = "tracking"

SECRET_MISSING = "SecretMissing"
SECRET_KEY_MISSING = "SecretKeyMissing"

SecretKeys = Mapping[str, frozenset[str] | None]
"""Secret name -> the keys of its data; None when the Secret does not exist."""


@dataclass(frozen=True)
class EventProblem:
    """A webhook (or the tracking host) whose Secret cannot be used; EventsReady names it."""

    webhook: str  # the webhook's name, or "tracking"
    reason: str  # SecretMissing, SecretKeyMissing
    message: str


@dataclass(frozen=True)
class EventsRendered:
    events: dict[str, Any]
    tracking: dict[str, Any] | None
    class_tracking: dict[str, dict[str, bool]]  # class name -> {opens, clicks}
    mounts: tuple[children.FilesMount, ...]
    problems: tuple[EventProblem, ...]


def webhook_dir(name: str) -> str:
    return f"{EVENTS_DIR}/{name}"


def webhook_volume(name: str) -> str:
    return f"events-{name}"


def _signing_key(webhook: pool_events.Webhook) -> str:
    return webhook.signing_key_secret_ref.key or pool_events.DEFAULT_SIGNING_KEY


def _ca_key(webhook: pool_events.Webhook) -> str | None:
    ref = webhook.ca_secret_ref
    return None if ref is None else ref.key or pool_events.DEFAULT_CA_KEY


def secret_names(spec: sp.SendingPoolSpec) -> list[str]:
    """The user's Secrets whose keys the rendering needs to know (none are read)."""
    names: list[str] = []
    for webhook in spec.events.webhooks:
        refs = [webhook.signing_key_secret_ref, webhook.ca_secret_ref]
        names += [r.name for r in refs if r is not None and r.name not in names]
    tls = spec.tracking.tls_secret_ref if spec.tracking is not None else None
    if tls is not None and tls.name not in names:
        names.append(tls.name)
    return names


def _check(
    owner: str, what: str, name: str, keys: tuple[str, ...], secrets: SecretKeys | None
) -> EventProblem | None:
    """None when the Secret holds `keys` (or nothing is known: assume it does)."""
    if secrets is None:
        return None
    present = secrets.get(name)
    if present is None:
        return EventProblem(owner, SECRET_MISSING, f"{what} Secret {name} does not exist")
    missing = [k for k in keys if k not in present]
    if missing:
        return EventProblem(
            owner, SECRET_KEY_MISSING, f"{what} Secret {name} has no key {', '.join(missing)}"
        )
    return None


def _webhook(
    webhook: pool_events.Webhook, secrets: SecretKeys | None
) -> tuple[dict[str, Any] | None, children.FilesMount, list[EventProblem]]:
    signing = webhook.signing_key_secret_ref
    files = [children.SecretFile(signing.name, _signing_key(webhook), SIGNING_KEY_FILE)]
    checks = [_check(webhook.name, f"webhook {webhook.name}: signing key", signing.name,
                     (_signing_key(webhook),), secrets)]
    ca_key = _ca_key(webhook)
    if webhook.ca_secret_ref is not None and ca_key is not None:
        files.append(children.SecretFile(webhook.ca_secret_ref.name, ca_key, CA_FILE))
        checks.append(_check(webhook.name, f"webhook {webhook.name}: CA",
                             webhook.ca_secret_ref.name, (ca_key,), secrets))
    problems = [p for p in checks if p is not None]
    directory = webhook_dir(webhook.name)
    mount = children.FilesMount(
        volume=webhook_volume(webhook.name),
        path=directory,
        files=tuple(files),
        optional=tuple(dict.fromkeys(f.secret_name for f in files)),
    )
    if problems:
        return None, mount, problems
    rendered: dict[str, Any] = {
        "name": webhook.name,
        "url": webhook.url,
        "types": list(webhook.types),
        "signingKeyFile": f"{directory}/{SIGNING_KEY_FILE}",
        "retryFor": webhook.retry_for,
    }
    if webhook.ca_secret_ref is not None:
        rendered["caFile"] = f"{directory}/{CA_FILE}"
    return rendered, mount, []


def _tracking(
    spec: sp.SendingPoolSpec, pool: str, secrets: SecretKeys | None
) -> tuple[dict[str, Any] | None, list[children.FilesMount], list[EventProblem]]:
    tracking = spec.tracking
    if tracking is None:
        return None, [], []
    key_secret = children.Names(pool).tracking_secret
    files = [children.SecretFile(key_secret, pool_secrets.TRACKING_KEY, pool_secrets.TRACKING_KEY)]
    rendered: dict[str, Any] = {
        "host": tracking.host,
        "keyFile": f"{TRACKING_DIR}/{pool_secrets.TRACKING_KEY}",
    }
    if tracking.machine_window is not None:
        rendered["machineWindow"] = tracking.machine_window
    problems: list[EventProblem] = []
    optional: tuple[str, ...] = ()
    tls = tracking.tls_secret_ref
    if tls is not None:
        files += [children.SecretFile(tls.name, f, f) for f in TLS_FILES]
        optional = (tls.name,)
        problem = _check("tracking", "tracking host TLS", tls.name, TLS_FILES, secrets)
        if problem is None:
            rendered["tlsCertFile"] = f"{TRACKING_DIR}/{TLS_FILES[0]}"
            rendered["tlsKeyFile"] = f"{TRACKING_DIR}/{TLS_FILES[1]}"
        else:
            problems.append(problem)
    mount = children.FilesMount(
        volume=TRACKING_VOLUME, path=TRACKING_DIR, files=tuple(files), optional=optional
    )
    return rendered, [mount], problems


def render_events(
    spec: sp.SendingPoolSpec, pool: str, secrets: SecretKeys | None = None
) -> EventsRendered:
    """The config sections and mounts; `secrets` None: assume every Secret is in place."""
    webhooks: list[dict[str, Any]] = []
    mounts: list[children.FilesMount] = []
    problems: list[EventProblem] = []
    for webhook in spec.events.webhooks:
        rendered, mount, trouble = _webhook(webhook, secrets)
        mounts.append(mount)
        problems += trouble
        if rendered is not None:
            webhooks.append(rendered)
    tracking, tracking_mounts, trouble = _tracking(spec, pool, secrets)
    mounts += tracking_mounts
    problems += trouble
    return EventsRendered(
        events={
            "stdout": spec.events.stdout,
            "webhooks": webhooks,
            "tagMetricsAllow": list(spec.events.tag_metrics_allow),
        },
        tracking=tracking,
        class_tracking={
            c.name: {"opens": c.tracking.opens, "clicks": c.tracking.clicks}
            for c in spec.classes
        },
        mounts=tuple(mounts),
        problems=tuple(problems),
    )


def refusals(spec: sp.SendingPoolSpec, *, allow_loopback_http: bool) -> list[str]:
    """Webhook URLs this operator refuses (the spec is then refused, the last good one keeps
    running): plain http, which the door lets through for 127.0.0.0/8 only, unless the
    setting `webhook_loopback_http` allows it (test beds)."""
    if allow_loopback_http:
        return []
    return [
        f"spec.events.webhooks[{i}].url: plain http is refused by this operator (setting "
        "webhook_loopback_http): use https"
        for i, webhook in enumerate(spec.events.webhooks)
        if pool_events.is_loopback_http(webhook.url)
    ]
