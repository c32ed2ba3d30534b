"""The operator's one door to the Kubernetes API: a small async client over aiohttp.

kopf watches and patches the objects it serves; everything else (Secrets, DNSEndpoints,
events, reading other kinds, status writes) goes through `Client`. Every call names a
`resources.Resource` and is refused unless that resource declares the verb, so RBAC can be
derived from `resources.ALL`.

Objects are plain JSON dicts: controllers convert them to `api` models where they need
types. Errors are `ApiError` subclasses that also inherit the builtin that fits
(`NotFound` is a `LookupError`), carrying the HTTP status and the API's reason.
"""

from __future__ import annotations

import datetime
import json
import os
import ssl
import tempfile
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal

import aiohttp

from mailfleet_operator.kube import config, resources

PatchType = Literal["merge", "json", "strategic"]
_CONTENT_TYPES: dict[PatchType, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"  # a JSON body is valid YAML
FIELD_MANAGER = "mailfleet-operator"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError, LookupError):
    pass


class Conflict(ApiError):
    """409: the object already exists, or it changed since it was read."""


class Invalid(ApiError, ValueError):
    """422: the API server's validation refused the object."""


class VerbNotDeclared(RuntimeError):
    """A call the resource table does not declare (so RBAC would not grant it)."""


def _check(resource: resources.Resource, verb: resources.Verb, subresource: str | None) -> None:
    if verb not in resource.verbs:
        raise VerbNotDeclared(f"{verb} on {resource.plural} is not declared in kube.resources")
    if subresource is not None and subresource not in resource.subresources:
        raise VerbNotDeclared(f"{resource.plural}/{subresource} is not declared in kube.resources")


def _ssl_context(connection: config.Connection) -> ssl.SSLContext | bool:
    if not connection.server.startswith("https://"):
        return False
    if connection.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(
            cadata=connection.ca_data.decode() if connection.ca_data else None
        )
    if connection.client_cert_data and connection.client_key_data:
        # ssl only loads certificates from files: write them briefly, private to this user.
        with tempfile.TemporaryDirectory() as directory:
            cert, key = os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem")
            for path, data in ((cert, connection.client_cert_data),
                               (key, connection.client_key_data)):
                with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as handle:
                    handle.write(data)
            context.load_cert_chain(cert, key)
    return context


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """A controller owner reference to `owner` (garbage collection deletes the child)."""
    metadata = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": metadata["name"],
        "uid": metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _answer(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The JSON object of a response, or the ApiError its Status describes."""
    text = await response.text()
    try:
        payload: Any = json.loads(text) if text else {}
    except ValueError:
        # Not a Status: e.g. "404 page not found" for a kind the cluster does not serve.
        if response.status < 400:
            raise
        payload = text
    if response.status >= 400:
        reason = payload.get("reason", "") if isinstance(payload, dict) else ""
        message = payload.get("message", text) if isinstance(payload, dict) else text
        kind: type[ApiError] = {404: NotFound, 409: Conflict, 422: Invalid}.get(
            response.status, ApiError
        )
        raise kind(response.status, str(reason), str(message))
    return payload if isinstance(payload, dict) else {}


class Client:
    """Async API client; use as `async with Client(connection) as client:`."""

    def __init__(self, connection: config.Connection, *, timeout: float = 30.0) -> None:
        self.connection = connection
        self._token = config.TokenFile(connection)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        headers = {"Accept": "application/json", "User-Agent": FIELD_MANAGER}
        # The token at open; `_request` sends the current one (it rotates) over it.
        headers.update(_auth(self._token.current()))
        self._session = aiohttp.ClientSession(
            base_url=self.connection.server,
            headers=headers,
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(ssl=_ssl_context(self.connection)),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        if self._session is None:
            raise RuntimeError("kube client used before open()")
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        sent = self._token.current()
        async with self._session.request(
            method, path, data=data, params=params, headers={**headers, **_auth(sent)}
        ) as response:
            if response.status == 401 and self.connection.token_file is not None:
                fresh = self._token.current(force=True)
                if fresh != sent:
                    # Rotated between our stat and the server's check (or rewritten in place
                    # within the mtime's resolution): once more, with the file's token.
                    async with self._session.request(
                        method, path, data=data, params=params, headers={**headers, **_auth(fresh)}
                    ) as again:
                        return await _answer(again)
            return await _answer(response)

    # --- generic verbs ------------------------------------------------------------------------

    async def get(
        self, resource: resources.Resource, *, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        _check(resource, "get", None)
        try:
            return await self._request("GET", resource.path(namespace=namespace, name=name))
        except NotFound:
            return None

    async def list(
        self,
        resource: resources.Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        _check(resource, "list", None)
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self._request("GET", resource.path(namespace=namespace), params=params)
        items = result.get("items", [])
        for item in items:  # list items carry no apiVersion/kind; put them back
            item.setdefault("apiVersion", resource.api_version)
            item.setdefault("kind", resource.kind)
        return list(items)

    async def create(
        self, resource: resources.Resource, *, body: Mapping[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        """Create; raises Conflict when an object of that name exists (never overwrites)."""
        _check(resource, "create", None)
        full = {"apiVersion": resource.api_version, "kind": resource.kind, **body}
        return await self._request(
            "POST", resource.path(namespace=namespace), body=full,
            params={"fieldManager": FIELD_MANAGER},
        )

    async def patch(
        self,
        resource: resources.Resource,
        *,
        name: str,
        patch: Any,
        namespace: str | None = None,
        patch_type: PatchType = "merge",
    ) -> dict[str, Any]:
        _check(resource, "patch", None)
        return await self._request(
            "PATCH", resource.path(namespace=namespace, name=name), body=patch,
            params={"fieldManager": FIELD_MANAGER}, content_type=_CONTENT_TYPES[patch_type],
        )

    async def patch_status(
        self,
        resource: resources.Resource,
        *,
        name: str,
        status: Mapping[str, Any],
        namespace: str | None = None,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch `.status` through the status subresource.

        With `resource_version`, the write fails with Conflict if the object changed since
        it was read (optimistic concurrency), so a status computed from stale input is not
        written over a newer one.
        """
        _check(resource, "patch", "status")
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self._request(
            "PATCH", resource.path(namespace=namespace, name=name) + "/status", body=body,
            params={"fieldManager": FIELD_MANAGER}, content_type=_CONTENT_TYPES["merge"],
        )

    async def delete(
        self, resource: resources.Resource, *, name: str, namespace: str | None = None
    ) -> bool:
        """Delete (background propagation); False when it was already gone."""
        _check(resource, "delete", None)
        try:
            await self._request(
                "DELETE", resource.path(namespace=namespace, name=name),
                body={"kind": "DeleteOptions", "apiVersion": "v1",
                      "propagationPolicy": "Background"},
            )
        except NotFound:
            return False
        return True

    async def apply(
        self,
        resource: resources.Resource,
        *,
        body: Mapping[str, Any],
        force: bool,
        namespace: str | None = None,
    ) -> dict[str, Any]:
        """Server-side apply of `body` (the whole intent: fields this manager applied before
        and no longer applies are removed) under the one field manager; creates the object
        when it does not exist.

        `force` takes fields another manager set (a `kubectl edit`); pass it only for an
        object the operator alone owns. Without it a field held by someone else with another
        value is a Conflict (409), so a foreign object is never silently taken over.
        """
        _check(resource, "patch", None)
        _check(resource, "create", None)  # an apply that creates is authorized as a create
        metadata = body.get("metadata") or {}
        full = {"apiVersion": resource.api_version, "kind": resource.kind, **body}
        params = {"fieldManager": FIELD_MANAGER}
        if force:
            params["force"] = "true"
        return await self._request(
            "PATCH",
            resource.path(namespace=namespace or metadata.get("namespace"), name=metadata["name"]),
            body=full, params=params, content_type=APPLY_CONTENT_TYPE,
        )

    # --- composite helpers --------------------------------------------------------------------

    async def apply_child(
        self,
        resource: resources.Resource,
        *,
        owner: Mapping[str, Any],
        body: Mapping[str, Any],
        compare: tuple[str, ...] = ("spec",),
    ) -> tuple[dict[str, Any], bool]:
        """Make a child owned by `owner` look like `body`: create, or merge-patch the fields
        in `compare` (plus labels and annotations) when they differ. Returns (object, changed).

        For objects the operator fully owns (a DNSEndpoint); never used for Secrets holding
        keys, which are created once and never rewritten.
        """
        metadata = dict(body.get("metadata", {}))
        namespace = metadata.get("namespace") or owner["metadata"].get("namespace")
        metadata["namespace"] = namespace
        metadata["ownerReferences"] = [owner_reference(owner)]
        desired = {**body, "metadata": metadata}
        current = await self.get(resource, name=metadata["name"], namespace=namespace)
        if current is None:
            try:
                return await self.create(resource, body=desired, namespace=namespace), True
            except Conflict:
                current = await self.get(resource, name=metadata["name"], namespace=namespace)
                if current is None:
                    raise
        patch: dict[str, Any] = {}
        for field in compare:
            if field in desired and current.get(field) != desired[field]:
                patch[field] = desired[field]
        current_meta = current.get("metadata", {})
        for key in ("labels", "annotations"):
            wanted = metadata.get(key) or {}
            have = current_meta.get(key) or {}
            if any(have.get(k) != v for k, v in wanted.items()):
                patch.setdefault("metadata", {})[key] = wanted
        if not patch:
            return current, False
        return await self.patch(
            resource, name=metadata["name"], namespace=namespace, patch=patch
        ), True

    async def post_event(
        self,
        *,
        regarding: Mapping[str, Any],
        type_: Literal["Normal", "Warning"],
        reason: str,
        message: str,
        component: str = FIELD_MANAGER,
        now: datetime.datetime | None = None,
    ) -> None:
        """A core/v1 Event on `regarding` (shown by `kubectl describe`). Never pass secrets."""
        metadata = regarding["metadata"]
        namespace = metadata.get("namespace") or "default"
        moment = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        await self.create(
            resources.EVENTS,
            namespace=namespace,
            body={
                "metadata": {
                    "name": f"{metadata['name']}.{uuid.uuid4().hex[:16]}",
                    "namespace": namespace,
                },
                "involvedObject": {
                    "apiVersion": regarding.get("apiVersion"),
                    "kind": regarding.get("kind"),
                    "name": metadata["name"],
                    "namespace": namespace,
                    "uid": metadata.get("uid"),
                },
                "type": type_,
                "reason": reason,
                "message": message[:1024],
                "source": {"component": component},
                "reportingComponent": component,
                "firstTimestamp": moment,
                "lastTimestamp": moment,
                "count": 1,
            },
        )
