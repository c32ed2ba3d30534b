"""DKIM private keys from the mounted Secret files, reloaded when a file changes.

Kubernetes updates a mounted Secret by swapping a `..data` symlink, so a changed key shows up as
a different inode/mtime behind the same path: `refresh()` re-stats every key file and reloads
the ones that changed. A key that cannot be read or parsed leaves its domain without that key
(and mail for a domain with no usable key is held, never sent unsigned); the error is kept for
logs and metrics, never the key material.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
from collections.abc import Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailfleet_sender import config, dkim_signing

log = logging.getLogger(__name__)

MIN_RSA_BITS = 1024
"""RFC 8301: verifiers must refuse RSA keys under 1024 bits, so we never sign with one."""

Stamp = tuple[int, int, int]


class KeyError_(ValueError):
    """A key file that cannot be used (unreadable, wrong type, too short)."""


def load_private_key(data: bytes, algorithm: str) -> dkim_signing.PrivateKey:
    """PEM (PKCS#8 or PKCS#1) for either algorithm; for Ed25519 also the 32-byte seed in base64
    (the format dkimpy and OpenDKIM tooling write)."""
    key: object
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyError_(f"not a usable PEM private key: {type(exc).__name__}") from exc
    elif algorithm == "ed25519":
        try:
            seed = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KeyError_("not PEM and not a base64 Ed25519 seed") from exc
        if len(seed) != 32:
            raise KeyError_("an Ed25519 seed must be 32 bytes")
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    else:
        raise KeyError_("not a PEM private key")
    if algorithm == "rsa":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeyError_("algorithm is rsa but the key is not RSA")
        if key.key_size < MIN_RSA_BITS:
            raise KeyError_(f"RSA key of {key.key_size} bits is too short")
        return key
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyError_("algorithm is ed25519 but the key is not Ed25519")
    return key


def _stamp(path: str) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclasses.dataclass
class _Entry:
    domain: str
    spec: config.DKIMKey
    stamp: Stamp | None = None
    key: dkim_signing.SigningKey | None = None
    error: str | None = None


class KeyStore:
    """Signing keys per domain; `keys_for(domain)` also serves subdomains (relaxed DMARC
    alignment: mail From news.example.com signed d=example.com passes)."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self.version = 0

    def configure(self, domains: Sequence[config.DKIMDomain]) -> None:
        """Take a (new) key list from the config; unchanged files are not re-read."""
        old = {(e.domain, e.spec.selector, e.spec.key_file): e for e in self._entries}
        entries: list[_Entry] = []
        for domain in domains:
            for spec in domain.keys:
                name = domain.domain.lower().rstrip(".")
                previous = old.get((name, spec.selector, spec.key_file))
                if previous is not None and previous.spec == spec:
                    entries.append(previous)
                else:
                    entries.append(_Entry(domain=name, spec=spec))
        self._entries = entries
        self.version += 1
        self.refresh()

    def refresh(self) -> bool:
        """Reload key files whose stat changed; True when any key changed."""
        changed = False
        for entry in self._entries:
            stamp = _stamp(entry.spec.key_file)
            if stamp == entry.stamp and (entry.key is not None or entry.error is not None):
                continue
            entry.stamp = stamp
            changed = True
            try:
                with open(entry.spec.key_file, "rb") as handle:
                    data = handle.read()
                private = load_private_key(data, entry.spec.algorithm)
            except (OSError, KeyError_) as exc:
                entry.key = None
                entry.error = str(exc) if isinstance(exc, KeyError_) else type(exc).__name__
                log.warning(
                    "dkim key unusable",
                    extra={
                        "domain": entry.domain,
                        "selector": entry.spec.selector,
                        "error": entry.error,
                    },
                )
                continue
            entry.key = dkim_signing.SigningKey(
                domain=entry.domain, selector=entry.spec.selector, key=private
            )
            entry.error = None
            log.info(
                "dkim key loaded",
                extra={"domain": entry.domain, "selector": entry.spec.selector},
            )
        if changed:
            self.version += 1
        return changed

    def keys_for(self, from_domain: str) -> list[dkim_signing.SigningKey]:
        """Usable keys of the closest configured domain at or above `from_domain`."""
        name = from_domain.lower().rstrip(".")
        while name:
            keys = [e.key for e in self._entries if e.domain == name and e.key is not None]
            if keys:
                return keys
            if any(e.domain == name for e in self._entries):
                return []
            name = name.partition(".")[2]
        return []

    def errors(self) -> dict[str, str]:
        return {
            f"{e.domain}/{e.spec.selector}": e.error for e in self._entries if e.error is not None
        }
