"""The pool's generated Secrets besides the admin token (pure, no I/O; the caller brings
the random values): `<pool>-links`, the link key list, `<pool>-peers`, the peer token, and,
for a pool with `spec.tracking`, `<pool>-tracking-key`, the HMAC key of tracking tokens.

One purpose per Secret, so each can be rotated alone: the admin token (operator -> pods), the
link keys (what mail carries and brings back: unsubscribe tokens, trace headers, VERP return
paths; they must outlive any other secret's rotation, links stay valid 60 days) and the peer
token (pod <-> pod suppression replication), and the tracking key (open pixels and click
links in mail already sent: like the link keys it must outlive other rotations, and a lost one
turns every tracked link sent with it into a 404).

Both are created once with random content and never rewritten by a reconcile: the user owns
their content from then on (a rotation adds a key, docs/security.md). A deleted one is created
again, with the content the operator last saw when it remembers it (the pods still hold it),
else with fresh random content (links sealed with the lost keys then stop verifying).

Data keys of the links Secret are `key-<unix seconds>`: the time from which that key seals
(`mailfleet_sender.link_keys` is the reader and says how the newest is chosen).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mailfleet_operator.logic import children

LINKS_VOLUME = "links"
PEERS_VOLUME = "peers"
PEER_TOKEN_KEY = "token"
TRACKING_KEY = "key"


def link_key_name(since: int) -> str:
    """The data key of a link key that seals from `since` (Unix seconds)."""
    return f"key-{since}"


def links_mount(pool: str) -> children.SecretMount:
    return children.SecretMount(volume=LINKS_VOLUME, secret_name=children.Names(pool).links_secret)


def peers_mount(pool: str) -> children.SecretMount:
    return children.SecretMount(
        volume=PEERS_VOLUME, secret_name=children.Names(pool).peers_secret,
        items=(PEER_TOKEN_KEY,),
    )


def peer_token_path(pool: str) -> str:
    return f"{peers_mount(pool).path}/{PEER_TOKEN_KEY}"


def _secret(name: str, pool: children.PoolObjects, data: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": children.meta(name, pool.namespace, pool.name, pool.owner),
        "data": dict(sorted(data.items())),
    }


def build_links_secret(pool: children.PoolObjects, *, data: Mapping[str, str]) -> dict[str, Any]:
    """`data`: data key -> base64 value, as the API stores it."""
    return _secret(children.Names(pool.name).links_secret, pool, data)


def build_peers_secret(pool: children.PoolObjects, *, data: Mapping[str, str]) -> dict[str, Any]:
    return _secret(children.Names(pool.name).peers_secret, pool, data)


def build_tracking_secret(
    pool: children.PoolObjects, *, data: Mapping[str, str]
) -> dict[str, Any]:
    """`data`: {TRACKING_KEY: base64 value}. Owned by the pool like the link keys: it goes
    with the pool, whose tracked links then have nothing left to serve them."""
    return _secret(children.Names(pool.name).tracking_secret, pool, data)
