"""DKIM key preference: per algorithm the first listed key whose file loads and is valid signs;
a domain is held only when none of its keys loads; late key files are picked up by refresh."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from mailfleet_sender import config, keys

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _domain(name: str, *specs: tuple[str, str, Path]) -> config.DKIMDomain:
    return config.DKIMDomain(domain=name, keys=[
        config.DKIMKey(selector=sel, algorithm=alg, key_file=str(path))  # type: ignore[arg-type]
        for sel, alg, path in specs])


def _selectors(store: keys.KeyStore, domain: str) -> list[str]:
    return [k.selector for k in store.keys_for(domain)]


def test_a_missing_preferred_key_falls_back_to_the_next_one_and_is_reported(
    tmp_path: Path,
) -> None:
    new, old = tmp_path / "new.pem", tmp_path / "old.pem"
    old.write_bytes(_pem(_RSA))
    store = keys.KeyStore()
    store.configure([_domain("example.com", ("s2", "rsa", new), ("s1", "rsa", old))])

    assert _selectors(store, "example.com") == ["s1"]
    assert _selectors(store, "news.example.com") == ["s1"]  # subdomains too
    assert store.in_use() == {"example.com": {"rsa": "s1"}}
    assert set(store.unusable()["example.com"]) == {"s2"}
    assert "BEGIN" not in store.unusable()["example.com"]["s2"]  # never key material

    version = store.version
    new.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    assert store.refresh() is True
    assert store.version > version  # cached signatures are not reused
    assert _selectors(store, "example.com") == ["s2"]
    assert store.unusable() == {}


def test_dual_signing_takes_the_first_usable_key_of_each_algorithm(tmp_path: Path) -> None:
    rsa_old, ed_old = tmp_path / "rsa-old.pem", tmp_path / "ed-old.pem"
    rsa_new, ed_new = tmp_path / "rsa-new.pem", tmp_path / "ed-new.pem"
    rsa_old.write_bytes(_pem(_RSA))
    ed_old.write_bytes(_pem(ed25519.Ed25519PrivateKey.generate()))
    ed_new.write_bytes(b"not a key\n")  # present but invalid: skipped like a missing one
    store = keys.KeyStore()
    store.configure([_domain("example.com", ("e2", "ed25519", ed_new), ("r2", "rsa", rsa_new),
                             ("r1", "rsa", rsa_old), ("e1", "ed25519", ed_old))])

    assert sorted(_selectors(store, "example.com")) == ["e1", "r1"]
    assert store.in_use() == {"example.com": {"ed25519": "e1", "rsa": "r1"}}

    rsa_new.write_bytes(_pem(_RSA))
    store.refresh()
    assert sorted(_selectors(store, "example.com")) == ["e1", "r2"]  # one signature per alg


def test_an_ed25519_file_listed_as_rsa_is_not_valid(tmp_path: Path) -> None:
    wrong, good = tmp_path / "wrong.pem", tmp_path / "good.pem"
    wrong.write_bytes(_pem(ed25519.Ed25519PrivateKey.generate()))
    good.write_bytes(_pem(_RSA))
    store = keys.KeyStore()
    store.configure([_domain("example.com", ("bad", "rsa", wrong), ("ok", "rsa", good))])
    assert _selectors(store, "example.com") == ["ok"]
    assert "not RSA" in store.unusable()["example.com"]["bad"]


def test_a_domain_is_held_only_when_none_of_its_keys_loads(tmp_path: Path) -> None:
    store = keys.KeyStore()
    store.configure([
        _domain("example.com", ("s2", "rsa", tmp_path / "a.pem"), ("s1", "rsa", tmp_path / "b")),
        _domain("example.org", ("e1", "ed25519", tmp_path / "c.pem")),
    ])
    assert store.keys_for("example.com") == []
    assert store.in_use() == {"example.com": {}, "example.org": {}}
    assert store.keys_for("unknown.net") == []

    (tmp_path / "b").write_bytes(_pem(_RSA))  # the old key shows up (e.g. Secret updated)
    store.refresh()
    assert _selectors(store, "example.com") == ["s1"]
    assert store.keys_for("example.org") == []


def test_a_reordered_list_changes_the_preferred_key_without_file_changes(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "a.pem", tmp_path / "b.pem"
    a.write_bytes(_pem(_RSA))
    b.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    store = keys.KeyStore()
    store.configure([_domain("example.com", ("a", "rsa", a), ("b", "rsa", b))])
    assert _selectors(store, "example.com") == ["a"]
    store.configure([_domain("example.com", ("b", "rsa", b), ("a", "rsa", a))])
    assert _selectors(store, "example.com") == ["b"]
