"""The operator's API client follows a rotating service-account token. The kubelet replaces a
pod's bound token file before the token expires (about every hour); a client that read the
file once at start (as it did) is refused with 401 from then on. Here a loopback server stands
in for the API server and accepts only the token the test says is current."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from mailfleet_operator.kube import client as kube_client
from mailfleet_operator.kube import config as kube_config
from mailfleet_operator.kube import resources


class ApiStandIn:
    """Answers GET of a ConfigMap to the current token, 401 to any other."""

    def __init__(self) -> None:
        self.valid = ""
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.seen.append(token)
        if token != self.valid:
            return web.json_response(
                {"kind": "Status", "reason": "Unauthorized", "message": "Unauthorized"},
                status=401,
            )
        return web.json_response({"kind": "ConfigMap", "metadata": {"name": "c"}})


@pytest.fixture
async def api() -> AsyncIterator[tuple[ApiStandIn, str]]:
    stand_in = ApiStandIn()
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/default/configmaps/c", stand_in.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield stand_in, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _swap(path: Path, token: str) -> None:
    """As the kubelet does: a new file renamed over the old (a new inode)."""
    fresh = path.with_suffix(".new")
    fresh.write_text(token)
    os.replace(fresh, path)


async def test_a_rewritten_token_file_is_used_at_the_next_request(
    api: tuple[ApiStandIn, str], tmp_path: Path
) -> None:
    stand_in, url = api
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    stand_in.valid = "first-token"
    connection = kube_config.Connection(
        server=url, token="first-token", token_file=str(token_file)
    )
    async with kube_client.Client(connection) as client:
        assert await client.get(resources.CONFIG_MAPS, name="c", namespace="default")
        # The kubelet rotates the token; the old one stops working.
        _swap(token_file, "second-token\n")
        stand_in.valid = "second-token"
        assert await client.get(resources.CONFIG_MAPS, name="c", namespace="default")
    assert stand_in.seen == ["first-token", "second-token"]


async def test_a_401_rereads_the_file_once_and_retries_with_the_new_token(
    api: tuple[ApiStandIn, str], tmp_path: Path
) -> None:
    """A token rewritten in place with the same size and mtime (the stat cannot tell):
    the 401 makes the client read the file again and retry once."""
    stand_in, url = api
    token_file = tmp_path / "token"
    token_file.write_text("aaaa-token")
    stat = token_file.stat()
    connection = kube_config.Connection(server=url, token="aaaa-token", token_file=str(token_file))
    async with kube_client.Client(connection) as client:
        with token_file.open("r+") as handle:
            handle.write("bbbb-token")
        os.utime(token_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        stand_in.valid = "bbbb-token"
        assert await client.get(resources.CONFIG_MAPS, name="c", namespace="default")
        assert stand_in.seen == ["aaaa-token", "bbbb-token"]
        # A token that is simply wrong is retried at most once per request, then refused.
        stand_in.valid, stand_in.seen = "cccc-token", []
        with pytest.raises(kube_client.ApiError) as refused:
            await client.get(resources.CONFIG_MAPS, name="c", namespace="default")
    assert refused.value.status == 401 and stand_in.seen == ["bbbb-token"]


def test_kopf_logs_in_with_the_token_the_file_holds_now(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("at-start\n")
    connection = kube_config.Connection(
        server="https://127.0.0.1:1", token="at-start", token_file=str(token_file)
    )
    _swap(token_file, "an-hour-later\n")
    assert kube_config.current_token(connection) == "an-hour-later"


def test_a_static_kubeconfig_token_is_used_as_given() -> None:
    connection = kube_config.Connection(server="https://127.0.0.1:1", token="static")
    assert kube_config.TokenFile(connection).current() == "static"
