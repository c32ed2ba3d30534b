"""The operator's client against the real kube-apiserver, with a service-account token file
that is replaced while the client runs (what the kubelet does with bound tokens): the client
authenticates with the token the file holds now, not the one it read at start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import config as kube_config
from mailfleet_operator.kube import resources
from sandbox_fixtures.api_fault_proxy import FaultUpstream
from sandbox_fixtures.operator import wait_for

SERVICE_ACCOUNTS = resources.Resource(
    group="", version="v1", plural="serviceaccounts", kind="ServiceAccount",
    verbs=frozenset({"get", "create"}))


async def _token(admin: kube_client.Client, account: str) -> str:
    answer = await admin._request(
        "POST", f"/api/v1/namespaces/default/serviceaccounts/{account}/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
              "spec": {"expirationSeconds": 600}})
    return str(answer["status"]["token"])


async def _who(client: kube_client.Client) -> str:
    review = await client._request(
        "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    return str(review["status"]["userInfo"]["username"])


async def test_a_replaced_token_file_is_read_again(
    fault_upstream: FaultUpstream, tmp_path: Path
) -> None:
    if fault_upstream.kind == "emulator":
        pytest.skip("the emulator does not authenticate")
    async with kube_client.Client(fault_upstream.connection) as admin:
        await wait_for(lambda: admin.get(SERVICE_ACCOUNTS, name="default", namespace="default"),
                       within=60, message="the default service account")
        if await admin.get(SERVICE_ACCOUNTS, name="rotated", namespace="default") is None:
            await admin.create(SERVICE_ACCOUNTS, namespace="default",
                               body={"metadata": {"name": "rotated"}})
        first, second = await _token(admin, "default"), await _token(admin, "rotated")
    token_file = tmp_path / "token"
    token_file.write_text(first)
    connection = kube_config.Connection(
        server=fault_upstream.connection.server, ca_data=fault_upstream.connection.ca_data,
        token=first, token_file=str(token_file))
    async with kube_client.Client(connection) as client:
        assert await _who(client) == "system:serviceaccount:default:default"
        fresh = tmp_path / "token.new"
        fresh.write_text(second)
        os.replace(fresh, token_file)
        assert await _who(client) == "system:serviceaccount:default:rotated"
        # An expired or revoked token in the file: the server's 401 reaches the caller.
        token_file.write_text("not-a-token")
        with pytest.raises(kube_client.ApiError) as refused:
            await _who(client)
        assert refused.value.status == 401
