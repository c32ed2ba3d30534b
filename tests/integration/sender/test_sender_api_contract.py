"""The sender's HTTP API against its contract (docs/sender-openapi.yaml), with schemathesis: a
real sender on 127.0.0.1, requests generated from the document (valid and invalid ones), and
every answer checked: no 5xx, a documented status code and content type, a body that conforms
to the documented schema. The document served at /openapi.json is the docs file.

Schemathesis (requests, blocking) runs in a worker thread while the sender serves on the test's
event loop. Budget: a fixed number of examples per operation, derandomized, no database.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.providers import ProviderFleet
from sandbox_fixtures.sender import (
    ADMIN_TOKEN,
    API_KEY,
    RunningSender,
    SenderFactory,
    base_config,
    lease,
    make_dkim_keys,
)
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "sender-openapi.yaml"
EXAMPLES = 25
"""Per operation and generation mode."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
UNREACHABLE = "http://127.0.0.1:9"
"""A hand-off target nothing listens on: generated targets never leave loopback."""

# Raw message bodies are generated as strings; send them as their UTF-8 bytes.
schemathesis.serializer.alias("message/rfc822", "text/plain")
schemathesis.serializer.alias("application/vnd.mailfleet.handoff", "text/plain")


GRANTS = itertools.count()
ADDRESSES = ["x@gmail.test", "Someone@Example.TEST", "a.b+c@yahoo.test", "<y@outlook.test>"]


def _steer(case: Any, valid_addresses: bool, address: str) -> Any:
    """Generated leases and hand-off targets point at loopback (tests stay on 127/8); half the
    cases get real addresses where the schema can only say "string", so requests also reach
    the code behind the address checks (queueing, suppressing)."""
    body = case.body
    leases = body.get("leases") if isinstance(body, dict) else None
    if case.path == "/v1/assignment" and isinstance(body, dict):
        for index, item in enumerate(leases if isinstance(leases, list) else []):
            if isinstance(item, dict) and "address" in item:
                item["address"] = f"127.0.0.{60 + index % 100}"
    if case.path == "/v1/drain" and isinstance(body, dict):
        target = body.get("target")
        if isinstance(target, dict) and "urls" in target:
            target["urls"] = [UNREACHABLE]
    if not valid_addresses:
        return case
    if case.path == "/v1/assignment" and isinstance(body, dict):
        # A newer grant than any before (generated ones may be huge), with a usable EHLO name.
        newer = 10**40 + next(GRANTS)
        body["generation"] = newer
        for item in leases if isinstance(leases, list) else []:
            if isinstance(item, dict):
                item.update(epoch=newer, heloName="mta.example.test")
    if case.path == "/v1/messages" and isinstance(body, dict):
        if "from" in body:
            body["from"] = "News <news@example.test>"
        if isinstance(body.get("to"), list):
            body["to"] = [address for _ in body["to"]][:5]
        if "envelopeFrom" in body:
            body["envelopeFrom"] = "bounce@example.test"
        if isinstance(body.get("headers"), dict):
            body["headers"] = {}
    if case.path_parameters and "address" in case.path_parameters:
        case.path_parameters["address"] = address
    if case.path == "/v1/tlsrpt" and isinstance(body, dict):
        # A report about the pool's own domain (any other is refused, 403).
        for item in body.get("policies") or []:
            if isinstance(item, dict) and isinstance(item.get("policy"), dict):
                item["policy"]["policy-domain"] = "example.test"
    if case.path == "/v1/suppressions" and isinstance(body, dict):
        entries = body.get("entries")
        for item in entries if isinstance(entries, list) else []:
            if isinstance(item, dict) and "address" in item:
                item["address"] = address
    return case


@pytest.fixture
async def sender(
    tmp_path: Path, dns_server: DNSServer, provider_fleet: ProviderFleet,
    sender_factory: SenderFactory,
) -> RunningSender:
    keys = make_dkim_keys(tmp_path / "keys", "example.test", dns_server)
    cfg = base_config(tmp_path, dns=dns_server, destination_port=provider_fleet.port, keys=keys)
    cfg["submission"].update(maxMessageSize=64 * 1024, maxRecipients=5)
    cfg["deliverability"] = {**cfg["deliverability"], "peers": {"urls": [UNREACHABLE]}}
    running = await sender_factory(cfg)
    await running.client.assign([lease("127.0.0.41")])
    # One of the steered addresses is on the list, so reads of an entry can succeed whatever
    # order the generated writes come in.
    status, _ = await running.client.request(
        "PUT", "/v1/suppressions/a.b+c@yahoo.test", admin=True, token=ADMIN_TOKEN)
    assert status in (200, 201)
    return running


async def test_the_served_document_is_the_docs_file(sender: RunningSender) -> None:
    status, served = await sender.client.request("GET", "/openapi.json", admin=True)
    assert status == 200
    assert served == yaml.safe_load(DOCS.read_text(encoding="utf-8"))


def _order(operation: Any) -> int:
    """Drain last (it stops submission), undrain after it."""
    return {("POST", "/v1/drain"): 1, ("DELETE", "/v1/drain"): 2}.get(
        (operation.method.upper(), operation.path), 0)


def _run_operation(
    operation: Any, mode: GenerationMode, base_url: str, token: str | None,
    statuses: dict[str, set[int]],
) -> list[str]:
    failures: list[str] = []
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=st.builds(_steer, operation.as_strategy(generation_mode=mode),
                          st.booleans(), st.sampled_from(ADDRESSES)))
    def run(case: Any) -> None:
        # Our credential, not the one generated from the security scheme (a generated one
        # is refused with 401 before the handler reads anything).
        generated = {k: v for k, v in (case.headers or {}).items()
                     if k.lower() not in ("authorization", "x-api-key")}
        response = case.call(base_url=base_url, session=session,
                             headers={**generated, **headers}, timeout=30)
        statuses.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        pass  # negative mode: nothing in this operation can be made invalid
    except Exception as exc:  # collect every operation's findings, then fail once
        failures.append(f"{operation.method.upper()} {operation.path} [{mode.value}]: {exc}")
    finally:
        session.close()
    return failures


def _token(operation: Any) -> str | None:
    security = operation.definition.raw.get("security", [])
    names = {name for requirement in security for name in requirement}
    if names & {"apiKey", "apiKeyHeader"}:
        return API_KEY
    if names & {"adminToken", "peerToken"}:
        return ADMIN_TOKEN
    return None


async def test_the_api_keeps_its_contract(sender: RunningSender) -> None:
    document = yaml.safe_load(DOCS.read_text(encoding="utf-8"))
    schema = schemathesis.openapi.from_dict(copy.deepcopy(document))
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=_order)
    # The listener of each operation's tag.
    ports = {"submission": sender.client.base, "public": sender.client.public,
             "admin": sender.client.admin}
    statuses: dict[str, set[int]] = {}

    def fuzz() -> list[str]:
        failures: list[str] = []
        for operation in operations:
            base_url = ports[operation.definition.raw["tags"][0]]
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                failures += _run_operation(operation, mode, base_url, _token(operation),
                                           statuses)
        return failures

    failures = await asyncio.to_thread(fuzz)
    assert not failures, "\n\n".join(failures)
    # The budget reached past the checks: every operation succeeded at least once (a one-click
    # unsubscribe and the tracking routes need a token the sender signed, which no generator
    # can make: tests/integration/sender/test_sender_tracking.py fetches real ones).
    sealed = {"POST /v1/unsubscribe/{token}", "GET /t/o/{token}.gif", "GET /t/c/{token}"}
    never = [op for op, seen in statuses.items()
             if not any(200 <= code < 300 for code in seen) and op not in sealed]
    assert not never, {op: statuses[op] for op in never}
    # Still serving, and undrained: a well-formed submission is queued.
    status, body = await sender.client.submit(
        {"from": "a@example.test", "to": ["x@gmail.test"], "subject": "after", "text": "hi"})
    assert status == 202, body



async def test_every_operation_with_a_security_requirement_refuses_no_credential(
    sender: RunningSender,
) -> None:
    document = yaml.safe_load(DOCS.read_text(encoding="utf-8"))
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or not operation.get("security"):
                continue
            url = path.replace("{address}", "x@gmail.test")
            admin = operation["tags"] == ["admin"]
            for token in (None, "wrong-credential"):
                status, body = await sender.client.request(
                    method.upper(), url, admin=admin, token=token, json={})
                assert status == 401, (method, path, token, body)


@pytest.mark.parametrize("query", ["since=18446744073709551616", "offset=" + "9" * 40,
                                   "limit=9223372036854775808"])
async def test_a_cursor_beyond_sqlite_integers_is_a_400_not_a_500(
    sender: RunningSender, query: str
) -> None:
    """Found by the contract test: the changes feed passed the cursor to SQLite, which
    overflowed (500)."""
    status, body = await sender.client.request(
        "GET", f"/v1/suppressions?{query}", admin=True, token=ADMIN_TOKEN)
    assert status == 400, body
    assert body["error"] == "bad_query"
