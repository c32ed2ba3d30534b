"""The API fault proxy (sandbox/mailfleet_sandbox/api_fault_proxy.py) in front of the emulator
and the real control plane: pass (requests and watch streams), error (503 Status, then pass),
blackhole (no answer, streams stall, then resume), and the caller's bearer token forwarded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import config as kube_config
from mailfleet_operator.kube import resources
from mailfleet_sandbox.api_fault_proxy import ApiFaultProxy, Mode
from sandbox_fixtures.api_fault_proxy import FaultUpstream
from sandbox_fixtures.operator import wait_for

CONFIG_MAPS = resources.Resource(group="", version="v1", plural="configmaps", kind="ConfigMap",
                                 verbs=frozenset({"get", "create", "delete"}))
"""The test's own: it deletes what it made (the operator never deletes ConfigMaps)."""


def config_map(name: str, label: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"fault-proxy-test": label}},
            "data": {"k": "v"}}


@contextlib.asynccontextmanager
async def clients(upstream: FaultUpstream, proxy: ApiFaultProxy, *, request_timeout: float = 30.0
                  ) -> AsyncIterator[tuple[kube_client.Client, kube_client.Client]]:
    """(direct client, client through the proxy), both admin."""
    async with kube_client.Client(upstream.connection) as direct, kube_client.Client(
            proxy.connection_via(upstream.connection), timeout=request_timeout) as via:
        yield direct, via


class Watch:
    """A raw watch of labelled ConfigMaps through the proxy; `names` fills as events come."""

    def __init__(self, upstream: FaultUpstream, proxy: ApiFaultProxy, label: str) -> None:
        self.url = (f"{proxy.url}/api/v1/namespaces/default/configmaps?watch=true"
                    f"&labelSelector=fault-proxy-test%3D{label}")
        self.ssl: ssl.SSLContext | bool = upstream.client_ssl()
        self.names: list[str] = []
        self.task: asyncio.Task[None] | None = None
        self.status: int | None = None
        self.chunked: bool | None = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl),
                timeout=aiohttp.ClientTimeout(total=None)) as session, session.get(
                self.url) as response:
            self.status = response.status
            self.chunked = response.headers.get("Transfer-Encoding") == "chunked"
            async for line in response.content:
                if line.strip():
                    event = json.loads(line)
                    if event["type"] == "ADDED":
                        self.names.append(event["object"]["metadata"]["name"])

    async def __aenter__(self) -> Watch:
        self.task = asyncio.create_task(self._run())
        await wait_for(lambda: self.status is not None, within=30, message="the watch to open")
        assert self.status == 200
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def cleanup(direct: kube_client.Client, names: list[str]) -> None:
    for name in names:
        await direct.delete(CONFIG_MAPS, name=name, namespace="default")


async def test_pass_forwards_requests_and_relays_watch_events_as_they_come(
        fault_upstream: FaultUpstream) -> None:
    label = uuid.uuid4().hex[:10]
    names = [f"pass-{label}-{i}" for i in range(2)]
    async with fault_upstream.proxy() as proxy, clients(fault_upstream, proxy) as (direct, via):
        try:
            async with Watch(fault_upstream, proxy, label) as watch:
                assert watch.chunked
                created = await via.create(CONFIG_MAPS, namespace="default",
                                           body=config_map(names[0], label))
                assert created["metadata"]["name"] == names[0]
                assert (await via.get(CONFIG_MAPS, name=names[0], namespace="default"))
                await direct.create(CONFIG_MAPS, namespace="default",
                                    body=config_map(names[1], label))
                await wait_for(lambda: watch.names == names, within=30,
                               message="both ADDED events through the proxy's stream")
            # Errors come back as the API server's own (404 -> False here).
            assert await via.delete(CONFIG_MAPS, name="absent-" + label,
                                    namespace="default") is False
        finally:
            await cleanup(direct, names)


async def test_error_answers_503_status_for_a_while_then_passes_and_streams_keep_flowing(
        fault_upstream: FaultUpstream) -> None:
    label = uuid.uuid4().hex[:10]
    names = [f"err-{label}-{i}" for i in range(2)]
    async with fault_upstream.proxy() as proxy, clients(fault_upstream, proxy) as (direct, via):
        try:
            async with Watch(fault_upstream, proxy, label) as watch:
                proxy.error(seconds=2.0)
                with pytest.raises(kube_client.ApiError) as refused:
                    await via.get(CONFIG_MAPS, name="anything", namespace="default")
                assert (refused.value.status, refused.value.reason) == (
                    503, "ServiceUnavailable")
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                        ssl=fault_upstream.client_ssl())) as raw, raw.get(
                        f"{proxy.url}/api/v1/namespaces") as response:
                    status = await response.json()
                assert status["kind"] == "Status" and status["code"] == 503
                # The open stream is not a new request: it keeps delivering.
                await direct.create(CONFIG_MAPS, namespace="default",
                                    body=config_map(names[0], label))
                await wait_for(lambda: watch.names == names[:1], within=30,
                               message="the event on the stream opened before the errors")
                await wait_for(lambda: proxy.mode is Mode.PASS, within=30,
                               message="the error period to end")
                await via.create(CONFIG_MAPS, namespace="default",
                                 body=config_map(names[1], label))
                await wait_for(lambda: watch.names == names, within=30, message="both events")
        finally:
            await cleanup(direct, names)


async def test_blackhole_never_answers_and_stalls_streams_until_it_ends(
        fault_upstream: FaultUpstream) -> None:
    label = uuid.uuid4().hex[:10]
    names = [f"bh-{label}-{i}" for i in range(1)]
    async with fault_upstream.proxy() as proxy, clients(
            fault_upstream, proxy, request_timeout=1.0) as (direct, via):
        try:
            async with Watch(fault_upstream, proxy, label) as watch:
                proxy.blackhole()
                before = proxy.requests
                with pytest.raises(TimeoutError):
                    await via.get(CONFIG_MAPS, name="anything", namespace="default")
                assert proxy.requests == before + 1, "the request reached the proxy"
                await direct.create(CONFIG_MAPS, namespace="default",
                                    body=config_map(names[0], label))
                # Stalled: give the event every chance to arrive (a bound, not a timing goal:
                # a read of the object directly proves the server has it).
                assert await direct.get(CONFIG_MAPS, name=names[0], namespace="default")
                await asyncio.sleep(1.0)
                assert watch.names == []
                proxy.passthrough()
                await wait_for(lambda: watch.names == names, within=30,
                               message="the stalled event once the blackhole ends")
                assert await via.get(CONFIG_MAPS, name=names[0], namespace="default")
        finally:
            await cleanup(direct, names)


async def test_the_callers_bearer_token_is_forwarded(fault_upstream: FaultUpstream) -> None:
    """A service-account token through the proxy authenticates as that service account, not
    as the proxy's admin certificate."""
    if fault_upstream.kind == "emulator":
        pytest.skip("the emulator does not authenticate")
    async with fault_upstream.proxy() as proxy, kube_client.Client(
            fault_upstream.connection) as direct:
        assert direct._session is not None
        await wait_for(lambda: direct.get(resources.Resource(
            group="", version="v1", plural="serviceaccounts", kind="ServiceAccount",
            verbs=frozenset({"get"})), name="default", namespace="default"),
            within=60, message="the default service account")
        async with direct._session.post(
                "/api/v1/namespaces/default/serviceaccounts/default/token",
                json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                      "spec": {"expirationSeconds": 600}}) as response:
            assert response.status == 201, await response.text()
            token = (await response.json())["status"]["token"]
        connection = kube_config.Connection(server=proxy.url,
                                            ca_data=fault_upstream.connection.ca_data,
                                            token=token)
        async with kube_client.Client(connection) as as_service_account:
            assert as_service_account._session is not None
            async with as_service_account._session.post(
                    "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                    json={"apiVersion": "authentication.k8s.io/v1",
                          "kind": "SelfSubjectReview"}) as response:
                assert response.status == 201, await response.text()
                review = await response.json()
    assert review["status"]["userInfo"]["username"] == (
        "system:serviceaccount:default:default")
