"""DKIM rotation end to end: the operator against the API emulator and a DNS server the test
controls (standing in for the zone external-dns or a human writes)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import email.utils
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from mailfleet_sandbox import fake_senders
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.fake_senders import FakeSender, FakeSenders, free_port
from mailfleet_sandbox.kube import ApiServer
from sandbox_fixtures.operator import (
    API_VERSION,
    NAME,
    OperatorRunner,
    condition,
    create_domainauth,
    domainauth,
    events,
    install_crds,
    key_secrets,
    key_states,
    operator_settings,
    publisher,
    rotate,
    wait_for,
)


async def active_first_key(api: ApiServer, dns_server: DNSServer, spec: dict[str, Any]) -> None:
    create_domainauth(api, spec)
    async with publisher(api, dns_server):
        await wait_for(lambda: key_states(api) == {"mf-1": "Active"}, message="mf-1 Active")


ROTATING = {"dkim": {"overlap": "1h", "rotateEvery": "90d"}}
# overlap is at least 1h at the door; the operator here runs its clock 1800x faster, so the
# retiring key withdraws after 2 s of the test's time.
TIME_SCALE = 1800.0


@pytest.fixture
async def operator(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer
) -> AsyncIterator[OperatorRunner]:
    install_crds(kube_api)
    runner = OperatorRunner(operator_settings(kubeconfig, dns_server, time_scale=TIME_SCALE))
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


async def test_a_full_rotation_is_published_verified_activated_and_retired(
    operator: OperatorRunner, kube_api: ApiServer, dns_server: DNSServer
) -> None:
    await active_first_key(kube_api, dns_server, ROTATING)
    rotate(kube_api, "2025-01-01")
    seen: list[dict[str, str]] = []

    def record_and_check() -> bool:
        states = key_states(kube_api)
        if not seen or seen[-1] != states:
            seen.append(states)
        return states == {"mf-1": "Retired", "mf-2": "Active"}

    async with publisher(kube_api, dns_server):
        await wait_for(record_and_check, within=15, message="mf-1 retired, mf-2 active")
    da = domainauth(kube_api)
    # The new key went through every state, one transition per step (a poll may miss the
    # short Pending step; the events below show each one).
    new_states = [s["mf-2"] for s in seen if "mf-2" in s]
    assert {"Published", "Verified", "Active"} <= set(new_states)
    assert da["status"]["activeSelector"] == "mf-2"
    names = [r["name"] for r in da["status"]["records"]]
    assert "mf-2._domainkey.example.com" in names
    assert "mf-1._domainkey.example.com" not in names  # withdrawn after the overlap
    assert set(key_secrets(kube_api)) == {"mf-1", "mf-2"}  # kept: revisionHistoryLimit 2
    reasons = events(kube_api)
    order = [r for r in reasons if r in {"RotationRequested", "KeyPublished", "KeyVerified",
                                         "KeyActivated", "KeyRetired"}]
    assert order[-5:] == ["RotationRequested", "KeyPublished", "KeyVerified", "KeyActivated",
                          "KeyRetired"]
    assert condition(da, "Ready")["status"] == "True"  # type: ignore[index]


async def test_dns_lagging_behind_holds_the_switch_until_the_new_key_appears(
    operator: OperatorRunner, kube_api: ApiServer, dns_server: DNSServer
) -> None:
    await active_first_key(kube_api, dns_server, ROTATING)
    rotate(kube_api, "now")
    lagging = True
    async with publisher(kube_api, dns_server, hold=lambda n: lagging and n.startswith("mf-2.")):
        await wait_for(lambda: key_states(kube_api).get("mf-2") == "Published")
        # Three verification intervals without the record: the rotation is reported stalled,
        # with the record to publish, and the old key keeps signing.
        stalled = await wait_for(
            lambda: (c := condition(domainauth(kube_api), "DKIMRotationStalled"))
            and c["status"] == "True" and c,
            within=20,
        )
        assert "mf-2._domainkey.example.com TXT" in stalled["message"]
        assert domainauth(kube_api)["status"]["activeSelector"] == "mf-1"
        assert key_states(kube_api)["mf-2"] == "Published"
        lagging = False
        await wait_for(lambda: key_states(kube_api) == {"mf-1": "Retiring", "mf-2": "Active"},
                       within=20)
    assert condition(domainauth(kube_api), "DKIMRotationStalled")["status"] == "False"  # type: ignore[index]


async def test_a_wrong_key_in_dns_never_becomes_active(
    operator: OperatorRunner, kube_api: ApiServer, dns_server: DNSServer
) -> None:
    await active_first_key(kube_api, dns_server, ROTATING)
    rotate(kube_api, "now")
    wrong = "v=DKIM1; k=rsa; p=" + base64.b64encode(b"not the key").decode()
    async with publisher(kube_api, dns_server, hold=lambda n: n.startswith("mf-2.")):
        await wait_for(lambda: key_states(kube_api).get("mf-2") == "Published")
        dns_server.set_records("mf-2._domainkey.example.com", "TXT", [wrong])

        def problem() -> str | None:
            for record in domainauth(kube_api)["status"]["records"]:
                if record["name"].startswith("mf-2."):
                    return record.get("problem")
            return None

        await wait_for(lambda: "different key" in (problem() or ""), within=20)
        # Several verifications later (each asks the nameserver again) it still has not
        # switched, and a check that finds DNS unchanged does not rewrite the status.
        first_check = problem()
        records_before = domainauth(kube_api)["status"]["records"]
        asked = dns_server.query_count("mf-2._domainkey.example.com", "TXT")
        await wait_for(
            lambda: dns_server.query_count("mf-2._domainkey.example.com", "TXT") >= asked + 3,
            within=20,
        )
        assert domainauth(kube_api)["status"]["records"] == records_before
        assert key_states(kube_api)["mf-2"] == "Published"
        assert domainauth(kube_api)["status"]["activeSelector"] == "mf-1"
        assert problem() == first_check


async def test_an_operator_restarted_mid_rotation_resumes_without_a_second_key(
    operator: OperatorRunner, kube_api: ApiServer, dns_server: DNSServer
) -> None:
    await active_first_key(kube_api, dns_server, ROTATING)
    rotate(kube_api, "now")
    await wait_for(lambda: key_states(kube_api).get("mf-2") == "Published")
    before = key_secrets(kube_api)["mf-2"]
    await operator.restart()
    async with publisher(kube_api, dns_server):
        await wait_for(lambda: key_states(kube_api).get("mf-2") == "Active", within=20)
    after = key_secrets(kube_api)
    assert set(after) == {"mf-1", "mf-2"}
    assert after["mf-2"]["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["mf-2"]["data"]["private.pem"] == before["data"]["private.pem"]
    assert events(kube_api).count("RotationRequested") == 1


def _dkimpy_key(pem: bytes, algorithm: str) -> bytes:
    """dkimpy wants RSA keys as PEM and Ed25519 keys as the base64 raw 32-byte seed."""
    if algorithm != "ed25519":
        return pem
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    return base64.b64encode(raw)


@pytest.mark.parametrize("algorithm", ["rsa-2048", "dual"])
async def test_mail_signed_with_the_active_key_verifies_with_dkimpy_against_dns(
    operator: OperatorRunner, kube_api: ApiServer, dns_server: DNSServer, algorithm: str
) -> None:
    create_domainauth(kube_api, {"dkim": {"algorithm": algorithm}})
    expected = {"mf-1": "Active"} if algorithm == "rsa-2048" else {
        "mf-1": "Active", "mf-1-ed": "Active"}
    async with publisher(kube_api, dns_server):
        await wait_for(lambda: key_states(kube_api) == expected, message="keys active")
    message = (
        b"From: news@example.com\r\nTo: someone@example.org\r\nSubject: hello\r\n"
        b"Date: " + email.utils.formatdate().encode() + b"\r\n"
        b"Message-ID: <1@example.com>\r\n\r\nHello there.\r\n"
    )
    resolver = dns_server.sync_resolver()

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes:
        text = name.decode() if isinstance(name, bytes) else name
        answer = resolver.resolve(text.rstrip("."), "TXT")
        return b"".join(next(iter(answer)).strings)

    status = domainauth(kube_api)["status"]
    for key in status["dkim"]["keys"]:
        secret = kube_api.get("v1", "Secret", key["secretName"], "default")
        pem = base64.b64decode(secret["data"]["private.pem"])
        signature = dkim.sign(
            message, key["selector"].encode(), b"example.com",
            _dkimpy_key(pem, key["algorithm"]),
            signature_algorithm=b"ed25519-sha256" if key["algorithm"] == "ed25519"
            else b"rsa-sha256",
        )
        signed = signature + message
        ok = await asyncio.to_thread(dkim.verify, signed, dnsfunc=dnsfunc)
        assert ok, f"{key['selector']} did not verify"
        tampered = signed.replace(b"Hello there.", b"Hello thar.")
        assert not await asyncio.to_thread(dkim.verify, tampered, dnsfunc=dnsfunc)


# --- retirement waits for the pools ----------------------------------------------------------

POD_HOST = "127.0.0.81"  # the fake sender pod of the pool answers here


@contextlib.asynccontextmanager
async def signing_pool(
    api: ApiServer, kubeconfig: Path, dns_server: DNSServer, *, time_scale: float = 1.0
) -> AsyncIterator[FakeSender]:
    """An operator (stats read every 0.3 s) and a SendingPool `mail` signing for the domain,
    its one pod a fake sender whose `signing` report the test sets."""
    port = free_port(POD_HOST)
    fleet = FakeSenders(port)
    runner = OperatorRunner(operator_settings(kubeconfig, dns_server, stats_interval=0.3,
                                              lease_renew_interval=1.0,
                                              time_scale=time_scale))
    install_crds(api)
    await runner.start()
    api.create(fake_senders.pool_body("mail", port=port, ips=["192.0.2.10"],
                                      domains=[NAME]))

    async def kubelet() -> None:
        while True:
            for pod in api.list("v1", "Pod", "default", label_selector="mailfleet.io/pool=mail"):
                if not (pod.get("status") or {}).get("podIP"):
                    await fleet.start(pod["metadata"]["name"], POD_HOST)
                    await api.set_pod_status("default", pod["metadata"]["name"], ready=True,
                                             pod_ip=POD_HOST)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(kubelet())
    try:
        await wait_for(lambda: "mail-0" in fleet.pods, message="the pool's pod")
        yield fleet["mail-0"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.stop()
        await fleet.stop()


def pool_signing(api: ApiServer) -> set[str]:
    status = api.get(API_VERSION, "SendingPool", "mail", "default").get("status") or {}
    return {e["selector"] for e in status.get("dkim") or [] if e["domain"] == "example.com"}


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_a_replaced_key_retires_only_after_the_pool_signs_with_the_new_one_and_the_overlap(
    kube_api: ApiServer, kubeconfig: Path, dns_server: DNSServer
) -> None:
    overlap = datetime.timedelta(hours=1)  # the least the door allows; 4 s at this scale
    async with signing_pool(kube_api, kubeconfig, dns_server, time_scale=900.0) as pod, \
            publisher(kube_api, dns_server):
        create_domainauth(kube_api, {"dkim": {"overlap": "1h"}})
        await wait_for(lambda: key_states(kube_api) == {"mf-1": "Active"}, message="mf-1")
        pod.signing = {"example.com": {"rsa": "mf-1"}}
        await wait_for(lambda: pool_signing(kube_api) == {"mf-1"}, message="pool reports mf-1")
        rotate(kube_api, "now")
        await wait_for(lambda: key_states(kube_api).get("mf-2") == "Active", message="switch")

        # The pod still signs with mf-1 (a paused or frozen pool would): however long that
        # lasts, mf-1 stays Active and published, and DKIMReady says who holds it.
        asked = dns_server.query_count("mf-2._domainkey.example.com", "TXT")
        await wait_for(
            lambda: dns_server.query_count("mf-2._domainkey.example.com", "TXT") >= asked + 5,
            message="five checks", within=30,
        )
        assert key_states(kube_api) == {"mf-1": "Active", "mf-2": "Active"}
        ready = condition(domainauth(kube_api), "DKIMReady")
        assert ready is not None and "SendingPool mail still signs with mf-1" in ready["message"]
        assert dns_server.txt_values("mf-1._domainkey.example.com")  # still published

        pod.signing = {"example.com": {"rsa": "mf-2"}}
        retiring = await wait_for(
            lambda: next((k for k in domainauth(kube_api)["status"]["dkim"]["keys"]
                          if k["selector"] == "mf-1" and k["state"] == "Retiring"), None),
            message="mf-1 Retiring", within=30,
        )
        began = parse_time(retiring["retiringSince"])  # operator time, as `ended` is
        assert pool_signing(kube_api) == {"mf-2"}
        await wait_for(lambda: key_states(kube_api).get("mf-1") == "Retired", within=30,
                       message="mf-1 Retired")
        secret = key_secrets(kube_api)["mf-1"]
        ended = parse_time(secret["metadata"]["annotations"]["mailfleet.io/dkim-state-since"])
        assert ended - began >= overlap
    assert "KeyRetiring" in events(kube_api)


async def test_a_record_missing_at_one_authoritative_nameserver_keeps_the_key_from_verified(
    operator: OperatorRunner, kube_api: ApiServer, dns_server: DNSServer
) -> None:
    # example.com has two nameservers; the second (same port, 127.0.0.2) lags behind.
    dns_server.set_records("example.com", "NS", ["ns1.example.com.", "ns2.example.com."])
    dns_server.set_records("ns1.example.com", "A", [dns_server.host])
    dns_server.set_records("ns2.example.com", "A", ["127.0.0.2"])
    async with DNSServer("127.0.0.2", dns_server.port) as second:
        create_domainauth(kube_api, {})
        async with publisher(kube_api, dns_server), publisher(kube_api, second):
            await wait_for(lambda: key_states(kube_api) == {"mf-1": "Active"}, message="mf-1")
        rotate(kube_api, "now")
        lagging = True
        async with publisher(kube_api, dns_server), publisher(
            kube_api, second, hold=lambda n: lagging and n.startswith("mf-2.")
        ):
            await wait_for(lambda: key_states(kube_api).get("mf-2") == "Published")
            # The resolver (the first server) returns the key; the second server does not.
            await wait_for(lambda: dns_server.txt_values("mf-2._domainkey.example.com"))
            asked = dns_server.query_count("mf-2._domainkey.example.com", "TXT")
            await wait_for(
                lambda: dns_server.query_count("mf-2._domainkey.example.com", "TXT") >= asked + 4,
                within=30, message="four checks",
            )
            assert key_states(kube_api)["mf-2"] == "Published"
            record = next(r for r in domainauth(kube_api)["status"]["records"]
                          if r["name"] == "mf-2._domainkey.example.com")
            assert not record["published"]
            assert "ns2.example.com (127.0.0.2)" in record["problem"]
            lagging = False
            await wait_for(lambda: key_states(kube_api).get("mf-2") == "Active", within=30)
