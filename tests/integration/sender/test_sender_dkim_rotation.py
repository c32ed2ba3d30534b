"""DKIM during a rotation, as the kubelet makes it happen: the config lists the new key first
and the previous one second, and the mounted Secret (one directory with every key of the
pool, `..data` symlink swaps) gets the new key file later. The sender signs with the old key
until the new file appears, then with the new one; every signature verifies with dkimpy."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from mailfleet_sender import dkim_signing
from sandbox_fixtures.sender import (
    SenderFactory,
    base_config,
    lease,
    make_dkim_keys,
    write_projected,
)

DOMAIN = "example.test"


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _project_secret(directory: Path, files: dict[str, str]) -> None:
    """The kubelet's update of a Secret volume: a new version dir with every file, one
    atomic `..data` swap, one `name -> ..data/name` symlink per file."""
    names = list(files)
    write_projected(directory, names[0], files[names[0]])
    data = (directory / "..data").resolve()
    for name in names[1:]:
        (data / name).write_text(files[name])
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(Path("..data") / name)


def _signatures(data: bytes) -> list[tuple[str, str]]:
    """(a=, s=) of each DKIM-Signature, in order."""
    out = []
    for field in data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").split(b"\r\n"):
        if field.lower().startswith(b"dkim-signature:"):
            tags = dict(
                part.strip().split("=", 1) for part in field.decode().split(":", 1)[1].split(";")
                if "=" in part
            )
            out.append((tags["a"].strip(), tags["s"].strip()))
    return out


def _verify(data: bytes, records: dict[bytes, bytes], count: int) -> None:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    verifier = dkim.DKIM(data)
    for index in range(count):
        assert verifier.verify(idx=index, dnsfunc=dnsfunc), f"signature {index} fails"


def _publish(dns: DNSServer, records: dict[bytes, bytes], selector: str,
             key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> None:
    value = dkim_signing.public_key_record(key)
    name = f"{selector}._domainkey.{DOMAIN}"
    dns.set_records(name, "TXT", [value])
    records[f"{name}.".encode()] = value.encode()


async def _send(sender: Any, rcpt: str) -> None:
    status, body = await sender.client.submit(
        {"from": f"news@{DOMAIN}", "to": [rcpt], "subject": "rotation", "text": "hello"})
    assert status == 202, body


async def test_the_first_listed_key_whose_file_exists_signs_and_a_late_file_takes_over(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    old = make_dkim_keys(tmp_path / "keys", DOMAIN, dns_server)  # rsa1, published
    assert old.rsa_key is not None
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    records = old.records()
    _publish(dns_server, records, "rsa2", new_key)
    secret = tmp_path / "dkim-secret"
    _project_secret(secret, {"rsa1.pem": _pem(old.rsa_key)})  # the new key is not there yet
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port)
    cfg["dkim"] = {"domains": [{"domain": DOMAIN, "keys": [
        {"selector": "rsa2", "algorithm": "rsa", "keyFile": str(secret / "rsa2.pem")},
        {"selector": "rsa1", "algorithm": "rsa", "keyFile": str(secret / "rsa1.pem")}]}]}
    sender = await sender_factory(cfg)
    await sender.client.assign([lease("127.0.0.26")])
    gmail = provider_fleet["gmail"]

    await _send(sender, "before@gmail.test")
    [first] = await gmail.wait_for(1)
    assert _signatures(first.data) == [("rsa-sha256", "rsa1")]
    _verify(first.data, records, 1)
    assert first.verdicts.get("dkim") == "pass"
    dkim_stats = (await sender.client.stats())["dkim"][DOMAIN]
    assert dkim_stats["selectors"] == {"rsa": "rsa1"}
    assert set(dkim_stats["unusable"]) == {"rsa2"}
    _, metrics = await sender.client.request("GET", "/metrics")
    assert ('mailfleet_sender_dkim_selector_in_use{algorithm="rsa",domain="example.test",'
            'selector="rsa1"} 1.0') in metrics
    assert 'mailfleet_sender_dkim_key_unusable{domain="example.test",selector="rsa2"}' in metrics

    # The kubelet catches up with the Secret: the new key appears next to the old one.
    _project_secret(secret, {"rsa1.pem": _pem(old.rsa_key), "rsa2.pem": _pem(new_key)})
    deadline = time.monotonic() + 10
    while (await sender.client.stats())["dkim"][DOMAIN]["selectors"] != {"rsa": "rsa2"}:
        assert time.monotonic() < deadline, "the new key file was not picked up"
        await asyncio.sleep(0.1)
    await _send(sender, "after@gmail.test")
    messages = await gmail.wait_for(2)
    after = next(m for m in messages if m.rcpt_to == ("after@gmail.test",))
    assert _signatures(after.data) == [("rsa-sha256", "rsa2")]
    _verify(after.data, records, 1)
    assert (await sender.client.stats())["dkim"][DOMAIN]["unusable"] == {}


async def test_dual_signing_uses_the_first_usable_key_of_each_algorithm(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> None:
    old = make_dkim_keys(tmp_path / "keys", DOMAIN, dns_server)  # rsa1 + ed1, published
    assert old.rsa_key is not None and old.ed_key is not None
    records = old.records()
    new_ed = ed25519.Ed25519PrivateKey.generate()
    _publish(dns_server, records, "ed2", new_ed)
    secret = tmp_path / "dkim-secret"
    _project_secret(secret, {"rsa1.pem": _pem(old.rsa_key), "ed1.pem": _pem(old.ed_key),
                             "ed2.pem": _pem(new_ed)})
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port)
    cfg["dkim"] = {"domains": [{"domain": DOMAIN, "keys": [
        {"selector": "rsa2", "algorithm": "rsa", "keyFile": str(secret / "rsa2.pem")},
        {"selector": "ed2", "algorithm": "ed25519", "keyFile": str(secret / "ed2.pem")},
        {"selector": "rsa1", "algorithm": "rsa", "keyFile": str(secret / "rsa1.pem")},
        {"selector": "ed1", "algorithm": "ed25519", "keyFile": str(secret / "ed1.pem")}]}]}
    sender = await sender_factory(cfg)
    await sender.client.assign([lease("127.0.0.27")])

    await _send(sender, "dual@outlook.test")
    [message] = await provider_fleet["outlook"].wait_for(1)
    # RSA: the new key is missing, so the old one; Ed25519: the new key is there.
    assert sorted(_signatures(message.data)) == [("ed25519-sha256", "ed2"),
                                                 ("rsa-sha256", "rsa1")]
    _verify(message.data, records, 2)
    stats = await sender.client.stats()
    assert stats["dkim"][DOMAIN]["selectors"] == {"rsa": "rsa1", "ed25519": "ed2"}
    assert stats["queues"]["transactional"]["held"] == 0
