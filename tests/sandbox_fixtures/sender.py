"""Fixtures to run mailfleet senders against the sandbox mail world: DKIM keys published in the
sandbox DNS, a config written the way the kubelet projects a ConfigMap (`..data` symlink), a
sender run in-process (`sender_factory`) or as a real process (`SenderProcess`, for SIGKILL and
SIGTERM tests), and small HTTP helpers for submission and the admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sender import clock, dkim_signing, service

ADMIN_TOKEN = "admin-token-for-tests"
LINK_KEY = "link-key-for-tests-0123456789abcdef"
LINK_KEY_NAME = "key-1700000000"
PEER_TOKEN = "peer-token-for-tests"
API_KEY = "api-key-for-tests"


@dataclasses.dataclass
class DkimKeys:
    """Keys of one signing domain, with their files and published records."""

    domain: str
    directory: Path
    rsa_selector: str = "rsa1"
    ed_selector: str = "ed1"
    rsa_key: rsa.RSAPrivateKey | None = None
    ed_key: ed25519.Ed25519PrivateKey | None = None

    @property
    def rsa_file(self) -> Path:
        return self.directory / f"{self.domain}.{self.rsa_selector}.pem"

    @property
    def ed_file(self) -> Path:
        return self.directory / f"{self.domain}.{self.ed_selector}.pem"

    def records(self) -> dict[bytes, bytes]:
        """name -> TXT value, for dkimpy's dnsfunc."""
        out: dict[bytes, bytes] = {}
        if self.rsa_key is not None:
            name = f"{self.rsa_selector}._domainkey.{self.domain}.".encode()
            out[name] = dkim_signing.public_key_record(self.rsa_key).encode()
        if self.ed_key is not None:
            name = f"{self.ed_selector}._domainkey.{self.domain}.".encode()
            out[name] = dkim_signing.public_key_record(self.ed_key).encode()
        return out

    def dnsfunc(self, name: bytes, timeout: int = 5) -> bytes | None:
        return self.records().get(name)

    def config(self, *, rsa_key: bool = True, ed_key: bool = False) -> dict[str, Any]:
        keys: list[dict[str, str]] = []
        if rsa_key:
            keys.append({"selector": self.rsa_selector, "algorithm": "rsa",
                         "keyFile": str(self.rsa_file)})
        if ed_key:
            keys.append({"selector": self.ed_selector, "algorithm": "ed25519",
                         "keyFile": str(self.ed_file)})
        return {"domain": self.domain, "keys": keys}


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


_RSA_CACHE: dict[int, rsa.RSAPrivateKey] = {}


def make_dkim_keys(
    directory: Path, domain: str, dns: DNSServer | None = None, *, rsa_bits: int = 2048
) -> DkimKeys:
    """RSA and Ed25519 keys for `domain`, written as PEM files and published in `dns`."""
    directory.mkdir(parents=True, exist_ok=True)
    if rsa_bits not in _RSA_CACHE:  # RSA generation is slow; tests may share one key
        _RSA_CACHE[rsa_bits] = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    keys = DkimKeys(domain=domain, directory=directory, rsa_key=_RSA_CACHE[rsa_bits],
                    ed_key=ed25519.Ed25519PrivateKey.generate())
    assert keys.rsa_key is not None and keys.ed_key is not None
    keys.rsa_file.write_bytes(_pem(keys.rsa_key))
    keys.ed_file.write_bytes(_pem(keys.ed_key))
    if dns is not None:
        for name, value in keys.records().items():
            dns.set_records(name.decode().rstrip("."), "TXT", [value.decode()])
    return keys


def write_projected(directory: Path, name: str, content: str) -> Path:
    """Write `name` the way the kubelet updates a ConfigMap volume: a new timestamped dir,
    then an atomic swap of the `..data` symlink; `name` itself is a symlink into `..data`."""
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{time.time_ns()}_{uuid.uuid4().hex[:6]}"
    version.mkdir()
    (version / name).write_text(content)
    tmp_link = directory / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    tmp_link.symlink_to(version.name)
    os.replace(tmp_link, directory / "..data")
    target = directory / name
    if not target.is_symlink():
        target.symlink_to(Path("..data") / name)
    return target


def write_secret_volume(directory: Path, files: dict[str, str]) -> Path:
    """Write a Secret's data keys the way the kubelet updates a Secret volume: a new version
    directory with every file, an atomic swap of `..data`, a `name -> ..data/name` symlink per
    key, and the symlinks of keys no longer there removed."""
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{time.time_ns()}_{uuid.uuid4().hex[:6]}"
    version.mkdir()
    for name, content in files.items():
        (version / name).write_text(content)
    tmp_link = directory / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    tmp_link.symlink_to(version.name)
    os.replace(tmp_link, directory / "..data")
    for entry in directory.iterdir():
        if entry.name.startswith(".."):
            continue
        if entry.name not in files:
            entry.unlink()
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(Path("..data") / name)
    return directory


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def lease(
    address: str,
    *,
    ttl: float = 300.0,
    epoch: int = 0,
    quota: int | None = None,
    warmup: bool = False,
    helo: str | None = None,
    classes: list[str] | None = None,
    lease_id: str | None = None,
) -> dict[str, Any]:
    """One lease of a `PUT /v1/assignment` body: `ttl` seconds from its receipt."""
    out: dict[str, Any] = {
        "address": address,
        "heloName": helo or f"mta-{address.replace('.', '-')}.example.test",
        "ttlSeconds": ttl,
        "epoch": epoch,
        "quotaRemaining": quota,
        "warmup": warmup,
        "leaseId": lease_id or uuid.uuid4().hex[:8],
    }
    if classes is not None:
        out["classes"] = classes
    return out


def base_config(
    tmp: Path, *, dns: DNSServer, destination_port: int, keys: DkimKeys | None = None
) -> dict[str, Any]:
    """A sender config for tests: loopback listeners on free ports, sandbox DNS, fast retries."""
    (tmp / "secrets").mkdir(parents=True, exist_ok=True)
    (tmp / "secrets" / "admin-token").write_text(ADMIN_TOKEN + "\n")
    (tmp / "secrets" / "api-key").write_text(API_KEY + "\n")
    # The pool's link keys and peer token, as the operator mounts them from the pool's -links
    # and -peers Secrets: pods made from one base config share them.
    write_secret_volume(tmp / "secrets" / "links", {LINK_KEY_NAME: LINK_KEY + "\n"})
    (tmp / "secrets" / "peer-token").write_text(PEER_TOKEN + "\n")
    cfg: dict[str, Any] = {
        "pool": "test-pool",
        "namespace": "default",
        "spoolDir": str(tmp / "spool"),
        "adminTokenFile": str(tmp / "secrets" / "admin-token"),
        "submission": {
            "listenAddress": "127.0.0.1",
            "smtpPort": 0,
            "httpPort": 0,
            "adminPort": 0,
            "apiKeyFile": str(tmp / "secrets" / "api-key"),
            # SMTP without AUTH (the HTTP key above is still required): these tests are
            # about intake and delivery; closed-by-default has its own tests, which leave
            # this out.
            "allowUnauthenticated": True,
            # One process whatever the machine's CPU limit: tests of intake workers set more.
            "processes": 1,
        },
        "delivery": {"smtpPort": destination_port, "connectTimeout": "3s",
                     "commandTimeout": "5s", "connectionIdle": "500ms"},
        "dns": {"nameservers": [{"address": dns.host, "port": dns.port}], "minTtl": "1s"},
        "retry": {"schedule": ["1s"], "maxAge": "1h"},
        "deliverability": {
            "linkKeyDir": str(tmp / "secrets" / "links"),
            "peerTokenFile": str(tmp / "secrets" / "peer-token"),
        },
    }
    if keys is not None:
        cfg["dkim"] = {"domains": [keys.config(rsa_key=True, ed_key=False)]}
    return cfg


def with_listener_ports(cfg: dict[str, Any], pick: Callable[[], int]) -> dict[str, Any]:
    """`cfg` with the admin and public ports it leaves out taken from `pick` (0: any free
    port), so tests never bind the fixed defaults (8081, 8082) that parallel runs share.
    Changed in place: a test keeps editing the dict it passed and rewrites the config."""
    submission = cfg.setdefault("submission", {})
    if not submission.get("adminPort"):
        submission["adminPort"] = pick()
    deliverability = cfg.setdefault("deliverability", {})
    if not deliverability.get("publicPort"):
        deliverability["publicPort"] = pick()
    return cfg


class SenderClient:
    """HTTP helpers against one sender's three listeners: submission (`base`), admin
    (`admin=True`) and public (`public=True`)."""

    def __init__(
        self, http_port: int, admin_port: int | None = None, *, host: str = "127.0.0.1",
        public_port: int | None = None,
    ) -> None:
        self.base = f"http://{host}:{http_port}"
        self.admin = f"http://{host}:{admin_port or http_port}"
        self.public = f"http://{host}:{public_port or http_port}"

    def listener_for(self, path: str) -> str:
        """The listener that serves `path` (docs/security.md): unsubscribe pages are public,
        `/v1/messages` is submission, everything else is admin."""
        if path.startswith("/v1/unsubscribe/"):
            return "public"
        if path.startswith("/v1/messages"):
            return "submission"
        return "admin"

    async def request(
        self, method: str, path: str, *, admin: bool = False, token: str | None = None,
        via: str | None = None, **kwargs: Any,
    ) -> tuple[int, Any]:
        """`via` names the listener to ask (default: the one serving `path`; `admin=True`
        sends `/v1/messages` to the admin listener, as a peer's hand-off)."""
        listener = via or ("admin" if admin else self.listener_for(path))
        base = {"admin": self.admin, "public": self.public, "submission": self.base}[listener]
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession() as http, http.request(
            method, base + path, headers=headers, **kwargs
        ) as response:
            text = await response.text()
            try:
                body: Any = await response.json(content_type=None)
            except ValueError:
                body = text
            return response.status, body

    async def submit(self, payload: dict[str, Any], *, key: str = API_KEY) -> tuple[int, Any]:
        return await self.request("POST", "/v1/messages", json=payload, token=key)

    async def assign(self, leases: list[dict[str, Any]], generation: int = 1) -> dict[str, Any]:
        status, body = await self.request(
            "PUT", "/v1/assignment", admin=True, token=ADMIN_TOKEN,
            json={"generation": generation, "leases": leases},
        )
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    async def stats(self) -> dict[str, Any]:
        status, body = await self.request("GET", "/v1/stats", admin=True, token=ADMIN_TOKEN)
        assert status == 200, body
        assert isinstance(body, dict)
        return body


class RunningSender:
    """An in-process sender started from a config dict (see `sender_factory`)."""

    def __init__(
        self, directory: Path, cfg: dict[str, Any], env: dict[str, str],
        clock_: clock.Clock | None = None,
    ) -> None:
        self.directory = directory
        self.cfg = cfg = with_listener_ports(cfg, lambda: 0)
        # The test process's stdout is pytest's: an in-process sender's event lines would land
        # between the test results. Sender processes keep the default (their log file).
        cfg.setdefault("events", {}).setdefault("stdout", False)
        self.env = env
        self.config_path = write_projected(directory / "config", "sender.yaml",
                                           yaml.safe_dump(cfg))
        self.service = service.Service(self.config_path, env=env, clock_=clock_, grace=5.0)
        self.client = SenderClient(0)

    async def start(self) -> None:
        await self.service.start()
        self.client = SenderClient(self.service.http_port, self.service.admin_port,
                                   public_port=self.service.public_port)

    @property
    def smtp_port(self) -> int:
        return self.service.smtp.port

    def rewrite_config(self, text: str | None = None) -> None:
        write_projected(self.directory / "config", "sender.yaml",
                        yaml.safe_dump(self.cfg) if text is None else text)

    async def stop(self) -> None:
        if not self.service.stopping:
            await self.service.stop(grace=2.0)


SenderFactory = Callable[..., Awaitable[RunningSender]]


@pytest.fixture
async def sender_factory(tmp_path: Path) -> AsyncIterator[SenderFactory]:
    """`await sender_factory(cfg_dict, pod="sender-0")` starts an in-process sender;
    `clock_` gives it its own clock (e.g. a skewed wall clock)."""
    started: list[RunningSender] = []

    async def factory(cfg: dict[str, Any], *, pod: str = "sender-0",
                      pod_ip: str | None = None,
                      clock_: clock.Clock | None = None) -> RunningSender:
        env = {"POD_NAME": pod}
        if pod_ip:
            env["POD_IP"] = pod_ip
        sender = RunningSender(tmp_path / pod, cfg, env, clock_)
        await sender.start()
        started.append(sender)
        return sender

    yield factory
    for sender in started:
        await sender.stop()


class SenderProcess:
    """A sender in its own process (`python -m mailfleet_sender`), for signal and multi-pod
    tests. With `pod_ip` it runs like a sandbox pod: POD_IP set, no listenAddress, so its
    listeners bind that 127.x address (and `requireLease: false` mail leaves from it)."""

    def __init__(
        self,
        directory: Path,
        cfg: dict[str, Any],
        *,
        pod: str = "sender-proc",
        pod_ip: str | None = None,
    ) -> None:
        self.directory = directory
        self.pod = pod
        self.pod_ip = pod_ip
        host = pod_ip or "127.0.0.1"
        cfg = dict(cfg)
        cfg["submission"] = dict(cfg["submission"])
        if pod_ip is not None:
            cfg["submission"].pop("listenAddress", None)
        cfg["submission"]["smtpPort"] = free_port(host)
        cfg["submission"]["httpPort"] = free_port(host)
        cfg["submission"]["adminPort"] = free_port(host)
        cfg["deliverability"] = {**(cfg.get("deliverability") or {}),
                                 "publicPort": free_port(host)}
        deliverability = dict(cfg.get("deliverability") or {})
        if deliverability.get("feedbackPort") == 0:
            deliverability["feedbackPort"] = free_port(host)
        if deliverability:
            cfg["deliverability"] = deliverability
        self.cfg = cfg
        self.config_path = write_projected(directory / "config", "sender.yaml",
                                           yaml.safe_dump(cfg))
        self.smtp_port = int(cfg["submission"]["smtpPort"])
        self.http_port = int(cfg["submission"]["httpPort"])
        self.admin_port = int(cfg["submission"]["adminPort"])
        self.public_port = int(deliverability["publicPort"])
        self.feedback_port = int(deliverability.get("feedbackPort") or 0)
        self.host = host
        self.client = SenderClient(self.http_port, self.admin_port, host=host,
                                   public_port=self.public_port)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "sender.log"

    @property
    def url(self) -> str:
        """The submission listener (applications, another pool's hand-off)."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def public_url(self) -> str:
        """The public listener (one-click unsubscribe pages)."""
        return f"http://{self.host}:{self.public_port}"

    @property
    def admin_url(self) -> str:
        """The admin listener: what the pool's peers use (replication, hand-off)."""
        return f"http://{self.host}:{self.admin_port}"

    def rewrite_config(self) -> None:
        """Write `self.cfg` again (before start, or to trigger a reload)."""
        write_projected(self.directory / "config", "sender.yaml", yaml.safe_dump(self.cfg))

    async def start(
        self, timeout: float = 20.0, *, probe: str = "/readyz",  # noqa: ASYNC109
        wrapper: Sequence[str] = (),
    ) -> None:
        """Run the process and wait for `probe` to answer 200 (`/healthz` for a pod that
        comes back draining, e.g. resuming a hand-off). `wrapper` goes before the command
        (a tracer such as strace that runs the sender as its child)."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: ASYNC220 - starts, does not wait
            [*wrapper, sys.executable, "-m", "mailfleet_sender",
             "--config", str(self.config_path)],
            stdout=log,
            stderr=log,
            env={**os.environ, "POD_NAME": self.pod,
                 **({"POD_IP": self.pod_ip} if self.pod_ip else {})},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sender exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                status, _ = await self.client.request("GET", probe)
                if status == 200:
                    return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"sender not ready: {self.log_path.read_text()[-2000:]}")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError("sender did not exit")
            await asyncio.sleep(0.05)
        return int(self.process.returncode)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def make_pool(
    tmp: Path, cfg: dict[str, Any], ips: list[str], *, prefix: str = "pool"
) -> list[SenderProcess]:
    """Sender processes of one pool, one per 127.x address, peers of each other (the static
    list standing in for the headless Service). Start them with `start_all`."""
    pods = [
        SenderProcess(tmp / f"{prefix}-{i}", {**cfg, "spoolDir": str(tmp / f"{prefix}-{i}" /
                                                                "spool")},
                      pod=f"{prefix}-{i}", pod_ip=ip)
        for i, ip in enumerate(ips)
    ]
    urls = [pod.admin_url for pod in pods]
    for pod in pods:
        deliverability = dict(pod.cfg.get("deliverability") or {})
        deliverability["peers"] = {"urls": urls, "pullInterval": "1s"}
        pod.cfg["deliverability"] = deliverability
        pod.rewrite_config()
    return pods


def common_port(hosts: list[str]) -> int:
    """A port free on every one of `hosts` (pods found through DNS share their ports)."""
    for _ in range(50):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no common free port")


def make_dns_pool(
    tmp: Path, cfg: dict[str, Any], ips: list[str], *, service: str,
    pull_interval: str = "1s", prefix: str = "dnspool",
) -> list[SenderProcess]:
    """Sender processes of one pool that find each other as in a cluster: through the A
    records of the headless Service name `service` (publish them in the sandbox DNS named in
    `cfg["dns"]`), all on one admin port. Start them with `start_all`."""
    port = common_port(ips)
    pods = []
    for i, ip in enumerate(ips):
        pod_cfg = {**cfg, "spoolDir": str(tmp / f"{prefix}-{i}" / "spool")}
        deliverability = dict(pod_cfg.get("deliverability") or {})
        deliverability["peers"] = {"service": service, "pullInterval": pull_interval}
        pod_cfg["deliverability"] = deliverability
        pod = SenderProcess(tmp / f"{prefix}-{i}", pod_cfg, pod=f"{prefix}-{i}", pod_ip=ip)
        pod.cfg["submission"]["adminPort"] = port
        pod.admin_port = port
        pod.client = SenderClient(pod.http_port, port, host=ip, public_port=pod.public_port)
        pod.rewrite_config()
        pods.append(pod)
    return pods


async def start_all(pods: list[SenderProcess]) -> None:
    await asyncio.gather(*(pod.start() for pod in pods))


@pytest.fixture
def process_reaper() -> Iterator[list[SenderProcess]]:
    """Append SenderProcess objects; every one still running is killed at teardown."""
    running: list[SenderProcess] = []
    yield running
    for pod in running:
        pod.kill()


async def inject(
    sender: RunningSender,
    count: int,
    *,
    to: Callable[[int], str],
    class_name: str = "marketing",
    tier: Callable[[int], str | None] = lambda i: None,
    from_address: str = "news@example.test",
    body_size: int = 200,
) -> None:
    """Put `count` messages straight into a running sender's spool and queues (bulk load
    without SMTP round trips)."""
    from mailfleet_sender import spool as spool_module

    svc = sender.service
    now = svc.clock.wall()  # the sender's own (maybe skewed) wall clock
    batch = []
    for i in range(count):
        data = (
            f"From: {from_address}\r\nTo: {to(i)}\r\nSubject: bulk {i} tier={tier(i)}\r\n"
            f"Message-ID: <bulk-{i}-{uuid.uuid4().hex}@example.test>\r\n"
            f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n" + "x" * body_size + "\r\n"
        ).encode()
        batch.append(
            spool_module.NewMessage(
                sender=from_address, recipients=(to(i),), data=data,
                from_domain=from_address.rpartition("@")[2], message_id=f"<bulk-{i}>",
                class_name=class_name, tier=tier(i), created=now,
            )
        )
    results = await svc.spool.submit_many(batch)
    for message, deliveries in zip(batch, results, strict=True):
        svc.engine.add(deliveries, data=message.data)
