"""The node agent's API access: the few HTTP calls a kubelet makes, and an informer (list,
then watch from the resourceVersion, relist on 410) that keeps a local cache of one kind."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

JSON = dict[str, Any]
log = logging.getLogger(__name__)

# ------------------------------------------------------------------------ API client
class ApiClient:
    """The few HTTP calls a kubelet makes, over aiohttp, against one API server URL."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/")
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context) \
                if self.ssl_context is not None else None
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json",
                      ok: Sequence[int] = (200, 201)) -> tuple[int, JSON]:
        data = json.dumps(body) if body is not None else None
        async with self.session.request(method, self.url + path, data=data,
                                        headers={"Content-Type": content_type}) as resp:
            text = await resp.text()
            try:
                parsed = json.loads(text) if text else {}
            except ValueError:
                parsed = {"message": text}
            if resp.status not in ok:
                log.debug("api %s %s -> %s %s", method, path, resp.status,
                          parsed.get("message"))
            return resp.status, parsed


class Informer:
    """A list+watch cache of one resource across namespaces; `on_change` after each event."""

    def __init__(self, client: ApiClient, path: str, on_change: Callable[[], None]) -> None:
        self.client = client
        self.path = path
        self.on_change = on_change
        self.items: dict[tuple[str, str], JSON] = {}
        self.synced = asyncio.Event()

    def get(self, namespace: str, name: str) -> JSON | None:
        return self.items.get((namespace, name))

    @staticmethod
    def _key(obj: JSON) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        return meta.get("namespace", ""), meta.get("name", "")

    async def run(self) -> None:
        while True:
            try:
                status, listed = await self.client.request("GET", self.path)
                if status != 200:
                    raise ConnectionError(f"list {self.path}: {status}")
                self.items = {self._key(o): o for o in listed.get("items") or []}
                self.synced.set()
                self.on_change()
                await self._watch(str((listed.get("metadata") or {}).get("resourceVersion")))
            except asyncio.CancelledError:
                raise
            except (TimeoutError, aiohttp.ClientError, ConnectionError, ValueError) \
                    as exc:
                log.debug("informer %s: %s; relisting", self.path, exc)
                await asyncio.sleep(0.3)

    async def _watch(self, rv: str) -> None:
        while True:
            joiner = "&" if "?" in self.path else "?"
            url = (f"{self.client.url}{self.path}{joiner}watch=true&resourceVersion={rv}"
                   "&allowWatchBookmarks=true&timeoutSeconds=300")
            async with self.client.session.get(
                    url, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
                if resp.status != 200:
                    raise ConnectionError(f"watch {self.path}: {resp.status}")
                async for line in _lines(resp.content):
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    kind = event.get("type")
                    if kind == "ERROR":
                        raise ConnectionError(f"watch {self.path}: {obj.get('message')}")
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        self.items.pop(self._key(obj), None)
                    else:
                        self.items[self._key(obj)] = obj
                    self.on_change()


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Newline-delimited watch events of any size (readline caps lines at 128 KiB)."""
    buffer = b""
    async for chunk in stream.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def api_server_url(api: str | Path) -> str:
    """The server URL of `api`: a URL as is, or the current context of a kubeconfig file."""
    text = str(api)
    if text.startswith(("http://", "https://")):
        return text.rstrip("/")
    config = yaml.safe_load(Path(text).read_text())
    current = config.get("current-context")
    context = next(c["context"] for c in config.get("contexts") or [] if c["name"] == current)
    cluster = next(c["cluster"] for c in config.get("clusters") or []
                   if c["name"] == context["cluster"])
    return str(cluster["server"]).rstrip("/")
