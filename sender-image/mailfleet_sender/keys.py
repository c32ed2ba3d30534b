"""DKIM private keys from the mounted Secret files, reloaded when a file changes.

Kubernetes updates a mounted Secret by swapping a `..data` symlink, so a changed key shows up as
a different inode/mtime behind the same path: `refresh()` re-stats every key file and reloads
the ones that changed, and a file missing at first is picked up when it appears.

Preference: a domain lists its keys in preference order (during a rotation the operator lists
the new Active key first, then the previous one, still published). Per algorithm (RSA,
Ed25519) mail is signed with the first listed key whose file loads and is valid. The kubelet
updates the config file and the Secret files at different moments (up to a minute apart), so
the config may name a key file that is not there yet, or no longer: the next key of the same
algorithm covers the gap. Mail for a domain none of whose keys load is held, never sent
unsigned. Errors are kept for logs, metrics and /v1/stats, never the key material.
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

_ALGORITHM_NAMES = {
    dkim_signing.Algorithm.RSA_SHA256: "rsa",
    dkim_signing.Algorithm.ED25519_SHA256: "ed25519",
}


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
        self._announced: dict[str, dict[str, str]] = {}
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
        self._log_selection()  # a new order may change the preferred key without a file change

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
                        "algorithm": entry.spec.algorithm,
                        "key_file": entry.spec.key_file,
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
            self._log_selection()
        return changed

    def keys_for(self, from_domain: str) -> list[dkim_signing.SigningKey]:
        """The signing keys for mail from `from_domain`: of the closest configured domain at or
        above it, per algorithm the first listed key that is usable (one RSA and one Ed25519
        signature at most). Empty when that domain has no usable key (the mail is held)."""
        name = from_domain.lower().rstrip(".")
        while name:
            if any(e.domain == name for e in self._entries):
                return self._preferred(name)
            name = name.partition(".")[2]
        return []

    def _preferred(self, domain: str) -> list[dkim_signing.SigningKey]:
        chosen: dict[str, dkim_signing.SigningKey] = {}
        for entry in self._entries:
            if entry.domain == domain and entry.key is not None:
                chosen.setdefault(entry.spec.algorithm, entry.key)
        return list(chosen.values())

    def in_use(self) -> dict[str, dict[str, str]]:
        """domain -> algorithm -> selector signing now (domains without a usable key: {})."""
        out: dict[str, dict[str, str]] = {}
        for entry in self._entries:
            out.setdefault(entry.domain, {})
        for domain in out:
            for key in self._preferred(domain):
                out[domain][_ALGORITHM_NAMES[key.algorithm]] = key.selector
        return out

    def unusable(self) -> dict[str, dict[str, str]]:
        """domain -> selector -> why its key cannot be used (never the key itself)."""
        out: dict[str, dict[str, str]] = {}
        for entry in self._entries:
            if entry.error is not None:
                out.setdefault(entry.domain, {})[entry.spec.selector] = entry.error
        return out

    def errors(self) -> dict[str, str]:
        return {
            f"{e.domain}/{e.spec.selector}": e.error for e in self._entries if e.error is not None
        }

    def _log_selection(self) -> None:
        """Say which selector signs each domain when that changes (rotations, late files)."""
        current = self.in_use()
        for domain, selectors in current.items():
            if self._announced.get(domain) == selectors:
                continue
            if selectors:
                log.info("dkim selectors in use", extra={"domain": domain, **{
                    f"{alg}_selector": sel for alg, sel in selectors.items()}})
            else:
                log.warning("dkim: no usable key, mail for the domain is held",
                            extra={"domain": domain})
        self._announced = current
