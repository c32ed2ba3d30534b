"""The Secret layout of DKIM keys, and reading rotation state back from Secrets.

Pure (no I/O). The Secrets are the durable truth of the rotation: each one records its key's
state in annotations, so a restarted operator (or a restored backup) resumes exactly where
it was, and a status lost or rewritten by hand changes nothing.

Layout, one Secret per selector (the contract with the SendingPool controller and senders):

    name         <domainauth>-dkim-<selector>        e.g. example-com-dkim-mf-3
    type         Opaque, immutable (the key material never changes; annotations may)
    owner        none with `keyRetention: Retain` (the default): the keys outlive the
                 DomainAuth, and one re-created with the same name and domain adopts them;
                 the DomainAuth (controller reference) with `keyRetention: Delete`
    labels       app.kubernetes.io/managed-by=mailfleet
                 mailfleet.io/domainauth=<domainauth>   mailfleet.io/selector=<selector>
                 mailfleet.io/dkim-generation=<n>
    annotations  mailfleet.io/domain, mailfleet.io/dkim-algorithm (rsa-2048|rsa-3072|ed25519),
                 mailfleet.io/dkim-algorithms (the generation's, comma-separated),
                 mailfleet.io/dkim-generation, mailfleet.io/dkim-state (Pending..Retired),
                 mailfleet.io/dkim-state-since, mailfleet.io/dkim-created-at,
                 mailfleet.io/dkim-activated-at, mailfleet.io/rotate-trigger,
                 mailfleet.io/dkim-seen-at (when every authoritative nameserver first
                 returned the record; the TTL wait before Verified counts from it)
    data         private.pem   PKCS#8 PEM, unencrypted
                 public.txt    the DNS TXT record value (v=DKIM1; k=...; p=...), for humans

The operator never rewrites `data` of an existing Secret (the API server refuses it too): a
key is created once. Only the state annotations and the owner reference change.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from mailfleet_operator.logic import domainauths, keys, records, rotating

PREFIX = "mailfleet.io/"
LABEL_DOMAINAUTH = PREFIX + "domainauth"
LABEL_SELECTOR = PREFIX + "selector"
LABEL_GENERATION = PREFIX + "dkim-generation"
ANNOTATION_STATE = PREFIX + "dkim-state"
ANNOTATION_STATE_SINCE = PREFIX + "dkim-state-since"
ANNOTATION_CREATED_AT = PREFIX + "dkim-created-at"
ANNOTATION_ACTIVATED_AT = PREFIX + "dkim-activated-at"
ANNOTATION_ALGORITHM = PREFIX + "dkim-algorithm"
ANNOTATION_ALGORITHMS = PREFIX + "dkim-algorithms"
ANNOTATION_GENERATION = PREFIX + "dkim-generation"
ANNOTATION_TRIGGER = PREFIX + "rotate-trigger"
ANNOTATION_DOMAIN = PREFIX + "domain"
ANNOTATION_SEEN_AT = PREFIX + "dkim-seen-at"
ROTATE_ANNOTATION = PREFIX + "rotate"
PRIVATE_KEY = "private.pem"
PUBLIC_RECORD = "public.txt"

_STATE_ORDER = list(rotating.KeyState)


def label_value(name: str) -> str:
    """Label values are limited to 63 characters; long names get a stable hash suffix."""
    if len(name) <= 63:
        return name
    return f"{name[:54]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def secret_name(*, domainauth: str, selector: str) -> str:
    name = f"{domainauth}-dkim-{selector}"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(domainauth.encode()).hexdigest()[:8]
    return f"{domainauth[:180]}-{digest}-dkim-{selector}"


def format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime.datetime:
    for pattern in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.datetime.strptime(text, pattern).replace(tzinfo=datetime.UTC)
        except ValueError:
            continue
    raise ValueError(f"not an RFC 3339 UTC time: {text!r}")


def key_secret_body(
    *,
    domainauth: str,
    domain: str,
    selector: str,
    generation: rotating.NewGeneration,
    key: keys.DkimKey,
    now: datetime.datetime,
) -> dict[str, Any]:
    """A new key's Secret (metadata without owner references, which the client adds)."""
    record = records.build_dkim_record(
        domain=domain, selector=selector, key_type=key.key_type, public_key_b64=key.public_b64
    )
    stamp = format_time(now)
    return {
        "type": "Opaque",
        "immutable": True,
        "metadata": {
            "name": secret_name(domainauth=domainauth, selector=selector),
            "labels": {
                "app.kubernetes.io/managed-by": "mailfleet",
                LABEL_DOMAINAUTH: label_value(domainauth),
                LABEL_SELECTOR: selector,
                LABEL_GENERATION: str(generation.number),
            },
            "annotations": {
                ANNOTATION_DOMAIN: domain,
                ANNOTATION_ALGORITHM: key.algorithm,
                ANNOTATION_ALGORITHMS: ",".join(generation.algorithms),
                ANNOTATION_GENERATION: str(generation.number),
                ANNOTATION_STATE: rotating.KeyState.PENDING.value,
                ANNOTATION_STATE_SINCE: stamp,
                ANNOTATION_CREATED_AT: stamp,
                ANNOTATION_TRIGGER: generation.trigger,
            },
        },
        "data": {
            PRIVATE_KEY: base64.b64encode(key.private_pem).decode("ascii"),
            PUBLIC_RECORD: base64.b64encode(record.value.encode()).decode("ascii"),
        },
    }


def state_annotations(
    *, state: rotating.KeyState, now: datetime.datetime
) -> dict[str, str]:
    """The annotation patch recording a transition into `state`."""
    patch = {ANNOTATION_STATE: state.value, ANNOTATION_STATE_SINCE: format_time(now)}
    if state == rotating.KeyState.ACTIVE:
        patch[ANNOTATION_ACTIVATED_AT] = format_time(now)
    return patch


def seen_annotations(*, seen_at: datetime.datetime | None) -> dict[str, str | None]:
    """The annotation patch recording (or, with None, forgetting) when DNS showed the key
    at every authoritative nameserver."""
    return {ANNOTATION_SEEN_AT: format_time(seen_at) if seen_at is not None else None}


@dataclasses.dataclass(frozen=True)
class KeySecret:
    """One Secret as read: its key (public half) and its recorded state."""

    secret_name: str
    stored: domainauths.StoredKey
    state: rotating.KeyState
    state_since: datetime.datetime
    created_at: datetime.datetime
    algorithms: tuple[keys.KeyAlgorithm, ...]
    trigger: str
    domain: str = ""
    """The domain the key was made for (annotation)."""
    owner_references: tuple[Mapping[str, Any], ...] = ()
    """The Secret's owner references (a DomainAuth's with `keyRetention: Delete`)."""
    seen_at: datetime.datetime | None = None
    immutable: bool = False
    """Whether the API server refuses changes of the data (Secrets made before keys were
    created immutable are made so)."""

    @property
    def owner_uids(self) -> tuple[str, ...]:
        return tuple(str(o.get("uid", "")) for o in self.owner_references)


def read_key_secret(secret: Mapping[str, Any], *, now: datetime.datetime) -> KeySecret | None:
    """Parse a key Secret; None when it is not one of ours (no generation/selector labels).

    Bad contents never raise: the key gets a `problem` that the conditions show, and the
    rotation leaves it frozen where it is.
    """
    metadata = secret.get("metadata", {})
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    name = str(metadata.get("name", ""))
    selector = labels.get(LABEL_SELECTOR)
    try:
        generation = int(str(labels.get(LABEL_GENERATION) or annotations[ANNOTATION_GENERATION]))
    except (KeyError, TypeError, ValueError):
        return None
    if not selector:
        return None
    problems: list[str] = []
    algorithm_text = str(annotations.get(ANNOTATION_ALGORITHM, ""))
    known: dict[str, keys.KeyAlgorithm] = {a: a for a in keys.KEY_ALGORITHMS}
    algorithm: keys.KeyAlgorithm = known.get(algorithm_text, "rsa-2048")
    if algorithm_text not in known:
        problems.append(f"annotation {ANNOTATION_ALGORITHM}={algorithm_text!r} is not an algorithm")
    algorithms_text = str(annotations.get(ANNOTATION_ALGORITHMS) or algorithm_text)
    algorithms = tuple(known[a] for a in algorithms_text.split(",") if a in known) or (algorithm,)
    try:
        state = rotating.KeyState(annotations.get(ANNOTATION_STATE, ""))
    except ValueError:
        state = rotating.KeyState.PENDING
        problems.append(f"annotation {ANNOTATION_STATE} is not a key state")
    times: dict[str, datetime.datetime] = {}
    for annotation in (ANNOTATION_STATE_SINCE, ANNOTATION_CREATED_AT):
        try:
            times[annotation] = parse_time(str(annotations.get(annotation, "")))
        except ValueError:
            times[annotation] = now
            problems.append(f"annotation {annotation} is not a time")
    seen_at = None
    if annotations.get(ANNOTATION_SEEN_AT):
        try:
            seen_at = parse_time(str(annotations[ANNOTATION_SEEN_AT]))
        except ValueError:
            seen_at = None  # not seen: the TTL wait simply starts again
    activated_at = None
    if annotations.get(ANNOTATION_ACTIVATED_AT):
        try:
            activated_at = parse_time(str(annotations[ANNOTATION_ACTIVATED_AT]))
        except ValueError:
            activated_at = None
    public_b64: str | None = None
    try:
        pem = base64.b64decode((secret.get("data") or {}).get(PRIVATE_KEY, ""), validate=True)
        public_b64 = keys.load_key(pem, algorithm=algorithm).public_b64
    except keys.KeyMaterialError as error:
        problems.append(f"Secret {name} key {PRIVATE_KEY}: {error}")
    except ValueError:
        problems.append(f"Secret {name} key {PRIVATE_KEY}: not base64")
    return KeySecret(
        secret_name=name,
        stored=domainauths.StoredKey(
            selector=str(selector),
            algorithm=algorithm,
            generation=generation,
            secret_name=name,
            public_b64=None if problems else public_b64,
            problem="; ".join(problems) or None,
            activated_at=activated_at,
        ),
        state=state,
        state_since=times[ANNOTATION_STATE_SINCE],
        created_at=times[ANNOTATION_CREATED_AT],
        algorithms=algorithms,
        trigger=str(annotations.get(ANNOTATION_TRIGGER, "")),
        domain=str(annotations.get(ANNOTATION_DOMAIN, "")),
        owner_references=tuple(
            dict(o) for o in metadata.get("ownerReferences") or [] if isinstance(o, Mapping)
        ),
        seen_at=seen_at,
        immutable=secret.get("immutable") is True,
    )


def group_generations(secrets: Sequence[KeySecret]) -> list[rotating.Generation]:
    """Key Secrets -> generations. A generation is as far along as its least advanced key,
    so an interrupted multi-Secret step is simply taken again."""
    by_number: dict[int, list[KeySecret]] = {}
    for secret in secrets:
        by_number.setdefault(secret.stored.generation, []).append(secret)
    generations = []
    for number, members in sorted(by_number.items()):
        laggard = min(members, key=lambda s: _STATE_ORDER.index(s.state))
        problems = [m.stored.problem for m in members if m.stored.problem]
        algorithms = members[0].algorithms
        order = {a: i for i, a in enumerate(algorithms)}
        members.sort(key=lambda m: order.get(m.stored.algorithm, 99))
        generations.append(
            rotating.Generation(
                number=number,
                algorithms=algorithms,
                selectors=tuple(m.stored.selector for m in members),
                state=laggard.state,
                created_at=min(m.created_at for m in members),
                state_since=laggard.state_since,
                trigger=members[0].trigger,
                problem="; ".join(problems) or None,
                seen_at=(
                    None
                    if any(m.seen_at is None for m in members)
                    else max(m.seen_at for m in members if m.seen_at is not None)
                ),
            )
        )
    return generations
