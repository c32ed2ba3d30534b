"""The pool's link keys and peer tokens, from their mounted Secrets, re-read when they change.

Link keys seal what we put into mail and must recognise when it comes back: the one-click
unsubscribe token, the trace header and the VERP return path. They live in their own Secret
(`<pool>-links`), apart from the admin token, so that rotating the admin token breaks no link
already sent (they were once derived from it, and were lost with it).

A key list, so a rotation keeps old links working for their lifetime. The Secret's data keys
are `key-<unix seconds>`: the number is when that key starts sealing. New links are sealed with
the newest key whose time has come; anything sealed with ANY listed key still verifies. Why
a start time and not simply "the newest": the kubelet updates the mounted files of each pod at
its own moment (up to a minute or two apart), and a link sealed by a pod that already has the
new key may be clicked on a pod that does not have it yet. A key added with a start a few
minutes ahead is on every pod before any pod seals with it. A key taken out of the Secret
stops verifying at once: its links are refused (remove it only after `unsubscribeMaxAge`,
60 days by default, and the bounce window have passed). Files of other names are ignored (the
kubelet's `..data` entries). If every key starts in the future, the earliest one seals.

Peer tokens (`<pool>-peers`, `peerTokenFile`): one per line; pods send the first and accept
every line, so a new token is first added as a second line (accepted everywhere), then moved
first, then the old line is dropped.

Pure except the `read_*` functions and `PoolKeys.refresh`, which read the mounted files.
Key material is never logged, only file names and counts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

KEY_NAME = re.compile(r"^key-(\d{1,12})$")
"""A link key's file (Secret data key): `key-<unix seconds from which it seals>`."""
MIN_KEY_BYTES = 16
LOCAL_KEY_FILE = "feedback.key"
"""A lone pod's own random key (no `linkKeyDir`), kept in its spool directory."""

Stamp = tuple[int, int, int]


class LinkKeyError(ValueError):
    """Key files that cannot be used; the message names the file, never the key."""


@dataclasses.dataclass(frozen=True)
class LinkKey:
    name: str
    since: int
    """Unix seconds from which this key seals new links (it verifies from the start)."""
    secret: bytes = dataclasses.field(repr=False)


def order(keys: Sequence[LinkKey]) -> tuple[LinkKey, ...]:
    """Newest start first (the name breaks ties, so every pod orders alike)."""
    return tuple(sorted(keys, key=lambda k: (k.since, k.name), reverse=True))


def sealing_key(keys: Sequence[LinkKey], now: float) -> LinkKey:
    """The key new links are sealed with: the newest whose start has come, else the earliest."""
    if not keys:
        raise LinkKeyError("no link key")
    ordered = order(keys)
    return next((k for k in ordered if k.since <= now), ordered[-1])


def read_key_dir(path: str | Path) -> tuple[LinkKey, ...]:
    """Every `key-<ts>` file of the directory, newest first. Refused (LinkKeyError): an
    unreadable directory, a key file under MIN_KEY_BYTES, or no key at all."""
    directory = Path(path)
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise LinkKeyError(f"cannot list link keys in {directory}: {exc.strerror}") from exc
    keys: list[LinkKey] = []
    for name in names:
        match = KEY_NAME.match(name)
        if match is None:
            continue
        try:
            secret = (directory / name).read_bytes().strip()
        except OSError as exc:
            raise LinkKeyError(f"cannot read link key {directory / name}: {exc.strerror}") from exc
        if len(secret) < MIN_KEY_BYTES:
            raise LinkKeyError(
                f"link key {directory / name} is shorter than {MIN_KEY_BYTES} bytes"
            )
        keys.append(LinkKey(name=name, since=int(match.group(1)), secret=secret))
    if not keys:
        raise LinkKeyError(f"no key-<unix seconds> file in {directory}")
    return order(keys)


def read_peer_tokens(path: str | Path) -> tuple[str, ...]:
    """Non-empty lines of the peer token file; the first is the one sent."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LinkKeyError(f"cannot read the peer token file {path}") from exc
    tokens = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not tokens:
        raise LinkKeyError(f"the peer token file {path} is empty")
    return tokens


def local_key(directory: str | Path) -> LinkKey:
    """A lone pod's random key, made once and kept in its spool: fine for one pod, never for a
    pool (config refuses peers without `linkKeyDir`), and never derived from another secret."""
    path = Path(directory) / LOCAL_KEY_FILE
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = secrets.token_bytes(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(secret)
        log.warning("no linkKeyDir: sealing links with a key local to this pod",
                    extra={"path": str(path)})
    return LinkKey(name=LOCAL_KEY_FILE, since=0, secret=secret)


def _stamp(path: Path) -> Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _dir_stamp(path: Path) -> tuple[Stamp | None, ...]:
    """The directory and each key file: a kubelet update swaps `..data`, which changes the
    directory's entries' targets; a hand-made directory may change a file in place."""
    try:
        names = sorted(n for n in os.listdir(path) if KEY_NAME.match(n))
    except OSError:
        return (None,)
    return (_stamp(path), *(_stamp(path / n) for n in names))


class PoolKeys:
    """The keys one pod uses now; `refresh()` re-reads the files when they changed and keeps
    the last good keys when the new files cannot be used (logged, counted in `errors`)."""

    def __init__(
        self,
        links: Sequence[LinkKey],
        peer_tokens: Sequence[str] = (),
        *,
        link_dir: str | None = None,
        peer_token_file: str | None = None,
    ) -> None:
        self.links = order(links)
        self.peer_tokens = tuple(peer_tokens)
        self.link_dir = link_dir
        self.peer_token_file = peer_token_file
        self._errors: dict[str, str] = {}
        self._link_stamp = _dir_stamp(Path(link_dir)) if link_dir else None
        self._peer_stamp = _stamp(Path(peer_token_file)) if peer_token_file else None

    @property
    def verifying(self) -> tuple[bytes, ...]:
        """Every listed key, newest first: what a returning link may be sealed with."""
        return tuple(k.secret for k in self.links)

    def sealing(self, now: float) -> bytes:
        return sealing_key(self.links, now).secret

    @property
    def peer_token(self) -> str | None:
        """The token this pod sends to its peers."""
        return self.peer_tokens[0] if self.peer_tokens else None

    def refresh(self) -> bool:
        """Re-read changed files; True when the keys or tokens changed."""
        changed = False
        if self.link_dir is not None:
            stamp = _dir_stamp(Path(self.link_dir))
            if stamp != self._link_stamp:
                try:
                    links = read_key_dir(self.link_dir)
                except LinkKeyError as exc:
                    self._failed("links", str(exc))
                else:
                    self._errors.pop("links", None)
                    self._link_stamp = stamp
                    changed |= links != self.links
                    self.links = links
                    log.info("link keys read", extra={
                        "keys": [k.name for k in links], "dir": self.link_dir})
        if self.peer_token_file is not None:
            stamp_ = _stamp(Path(self.peer_token_file))
            if stamp_ != self._peer_stamp:
                try:
                    tokens = read_peer_tokens(self.peer_token_file)
                except LinkKeyError as exc:
                    self._failed("peers", str(exc))
                else:
                    self._errors.pop("peers", None)
                    self._peer_stamp = stamp_
                    changed |= tokens != self.peer_tokens
                    self.peer_tokens = tokens
                    log.info("peer tokens read", extra={"tokens": len(tokens)})
        return changed

    @property
    def error(self) -> str | None:
        """Why the current files are not in use (the last good keys are), else None."""
        return "; ".join(self._errors.values()) or None

    def _failed(self, source: str, why: str) -> None:
        if self._errors.get(source) != why:
            log.error("keys unusable; keeping the last good ones", extra={"error": why})
        self._errors[source] = why
