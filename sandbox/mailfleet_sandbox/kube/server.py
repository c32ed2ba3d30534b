"""HTTP front of the emulator: routing, content negotiation, watch streams (aiohttp).

Only this module speaks HTTP; semantics live in `registry`, storage in `store`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import unquote

import yaml
from aiohttp import web

from mailfleet_sandbox.kube import discovery, errors, openapi, tables
from mailfleet_sandbox.kube.registry import Registry, WriteOptions
from mailfleet_sandbox.kube.resources import ResourceType
from mailfleet_sandbox.kube.selectors import format_label_selector
from mailfleet_sandbox.kube.store import Event, Expired

log = logging.getLogger(__name__)
JSON = dict[str, Any]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _json(obj: Any, status: int = 200, warnings: list[str] | None = None) -> web.Response:
    resp = web.Response(text=_dumps(obj), status=status, content_type="application/json")
    for w in warnings or []:
        resp.headers.add("Warning", '299 - "' + w.replace('"', '\\"') + '"')
    return resp


def _error(exc: errors.ApiError) -> web.Response:
    return _json(exc.to_status(), exc.code)


class Route:
    """A parsed resource URL."""

    def __init__(self, rt: ResourceType, namespace: str | None, name: str, sub: str) -> None:
        self.rt, self.namespace, self.name, self.sub = rt, namespace, name, sub


class HttpApi:
    """aiohttp handlers over a Registry; every failure is a Status with the right code."""

    def __init__(self, registry: Registry, bookmark_interval: float = 5.0) -> None:
        self.registry = registry
        self.bookmark_interval = bookmark_interval
        self.address = "127.0.0.1:0"
        self._openapi_cache: dict[str, tuple[str, JSON]] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except errors.ApiError as exc:
            return _error(exc)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # never let a bug become a hung client
            log.exception("internal error on %s %s", request.method, request.path)
            return _error(errors.internal(repr(exc)))

    # ----------------------------------------------------------------- dispatch
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        parts = [unquote(p) for p in path.strip("/").split("/")] if path != "/" else []
        reg = self.registry
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if path == "/version":
            return _json(discovery.SERVER_VERSION)
        if path == "/api":
            return _json(discovery.api_versions(self.address))
        if path == "/apis":
            return _json(discovery.api_group_list(reg.groups()))
        if parts[:2] == ["openapi", "v3"]:
            return self._openapi(parts[2:])
        if parts[:2] == ["openapi", "v2"] or path == "/swagger-2.0.0.pb-v1":
            raise errors.ApiError(404, "NotFound", "the server could not find the requested "
                                  "resource (openapi v2 is not served by the sandbox)")
        if parts[:2] == ["api", "v1"] and len(parts) == 2:
            return _json(discovery.resource_list("v1", reg.types_in("", "v1")))
        if parts and parts[0] == "apis" and len(parts) == 2:
            versions = reg.groups().get(parts[1])
            if not versions:
                raise errors.page_not_found(path)
            return _json(discovery.api_group(parts[1], versions))
        if parts and parts[0] == "apis" and len(parts) == 3:
            types = reg.types_in(parts[1], parts[2])
            if not types:
                raise errors.page_not_found(path)
            return _json(discovery.resource_list(f"{parts[1]}/{parts[2]}", types))
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts and parts[0] == "apis" and len(parts) > 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise errors.page_not_found(path)
        watch_path = False
        if rest and rest[0] == "watch":
            watch_path, rest = True, rest[1:]
        route = self._route(group, version, rest)
        return await self._resource(request, route, watch_path)

    def _route(self, group: str, version: str, rest: list[str]) -> Route:
        reg = self.registry
        if len(rest) >= 3 and rest[0] == "namespaces" and not (
                len(rest) == 3 and rest[2] in ("status", "finalize")):
            ns = rest[1]
            rt = reg.resolve(group, version, rest[2])
            if not rt.namespaced:
                raise errors.page_not_found("/".join(rest))
            name = rest[3] if len(rest) > 3 else ""
            sub = rest[4] if len(rest) > 4 else ""
            if len(rest) > 5:
                raise errors.page_not_found("/".join(rest))
            return Route(rt, ns, name, sub)
        if not rest or len(rest) > 3:
            raise errors.page_not_found("/".join(rest))
        rt = reg.resolve(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if rt.namespaced and name:
            raise errors.page_not_found("/".join(rest))
        return Route(rt, None, name, sub)

    # ----------------------------------------------------------------- openapi
    def _openapi(self, rest: list[str]) -> web.Response:
        reg = self.registry
        gvs: dict[str, tuple[str, list[ResourceType]]] = {}
        for group, versions in reg.groups().items():
            for v in versions:
                key = f"apis/{group}/{v}" if group else f"api/{v}"
                gv = f"{group}/{v}" if group else v
                gvs[key] = (gv, reg.types_in(group, v))
        if not rest:
            out = {}
            for key, (gv, types) in gvs.items():
                doc = openapi.group_version_document(gv, types)
                digest = openapi.document_hash(doc)
                self._openapi_cache[key] = (digest, doc)
                out[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
            return _json({"paths": out})
        key = "/".join(rest)
        if key not in gvs:
            raise errors.page_not_found(key)
        gv, types = gvs[key]
        return _json(openapi.group_version_document(gv, types))

    # ---------------------------------------------------------------- resources
    def _options(self, request: web.Request) -> WriteOptions:
        q = request.query
        dry = q.getall("dryRun", [])
        bad = [i for i, d in enumerate(dry) if d != "All"]
        if bad:
            # what the real server says: the options object fails validation (422)
            options = {"POST": "CreateOptions", "PATCH": "PatchOptions",
                       "DELETE": "DeleteOptions"}.get(request.method, "UpdateOptions")
            detail = f'Unsupported value: "{dry[bad[0]]}": supported values: "All"'
            raise errors.ApiError(
                422, "Invalid", f'{options}.meta.k8s.io "" is invalid: dryRun[{bad[0]}]: '
                f"{detail}", kind=options, group="meta.k8s.io",
                causes=[errors.Cause("FieldValueNotSupported", detail, f"dryRun[{bad[0]}]")])
        validation = q.get("fieldValidation", "Warn") or "Warn"
        if validation not in ("Strict", "Warn", "Ignore"):
            raise errors.bad_request(f"fieldValidation must be one of Ignore, Warn, or "
                                     f"Strict, got {validation}")
        force = q.get("force", "false").lower() == "true"
        manager = q.get("fieldManager", "")
        if not manager and "apply-patch" not in request.headers.get("Content-Type", ""):
            # updates without a fieldManager are owned by the User-Agent's product name;
            # an apply must name its manager (400)
            manager = request.headers.get("User-Agent", "").split("/")[0][:128]
        return WriteOptions(dry_run=bool(dry), field_validation=validation,
                            field_manager=manager, force=force)

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        ctype = request.content_type or "application/json"
        if "protobuf" in ctype or "cbor" in ctype:
            raise errors.ApiError(415, "UnsupportedMediaType",
                                  f'the body of the request was in an unknown format - '
                                  f'accepted media types include: application/json, '
                                  f'application/yaml (got "{ctype}")')
        try:
            if "yaml" in ctype:
                return yaml.safe_load(raw.decode())
            return json.loads(raw or b"null")
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.bad_request(f"couldn't get version/kind; json parse error: {exc}") \
                from None

    async def _resource(self, request: web.Request, route: Route,
                        watch_path: bool) -> web.StreamResponse:
        reg = self.registry
        rt, ns, name, sub = route.rt, route.namespace or "", route.name, route.sub
        method = request.method
        q = request.query
        if sub and sub not in ("status", "scale", "finalize", "binding"):
            raise errors.page_not_found(sub)
        if (sub == "status" and not rt.status) or (sub == "scale" and rt.scale is None) \
                or (sub == "finalize" and rt.storage_key != "/namespaces") \
                or (sub == "binding" and rt.storage_key != "/pods"):
            raise errors.page_not_found(sub)
        if sub == "binding":
            if method != "POST":
                raise errors.method_not_allowed()
            res = reg.bind_pod(ns, name, await self._body(request), self._options(request))
            return _json(res.obj, res.code)
        if method == "GET":
            watching = watch_path or q.get("watch", "").lower() in ("true", "1")
            if not name or watching:
                if name:
                    ns_filter = route.namespace
                    selector = f"metadata.name={name}"
                    fs = q.get("fieldSelector", "")
                    return await self._watch(request, rt, ns_filter,
                                             fs + ("," if fs else "") + selector)
                if watching:
                    return await self._watch(request, rt, route.namespace,
                                             q.get("fieldSelector", ""))
                return self._list(request, rt, route.namespace)
            if sub == "scale":
                return _json(self._scale_view(rt, reg.get(rt, ns, name)))
            obj = reg.get(rt, ns, name)
            return self._render_one(request, rt, obj)
        if method == "POST":
            if name:
                raise errors.method_not_allowed()
            body = await self._body(request)
            res = reg.create(rt, ns, body, self._options(request))
            return _json(res.obj, res.code, res.warnings)
        if method == "PUT":
            if not name:
                raise errors.method_not_allowed()
            body = await self._body(request)
            opts = self._options(request)
            if sub == "scale":
                return _json(self._update_scale(rt, ns, name, body, opts))
            if sub == "finalize":
                return self._finalize(rt, name, body, opts)
            res = reg.update(rt, ns, name, body, sub, opts)
            return _json(res.obj, res.code, res.warnings)
        if method == "PATCH":
            if not name:
                raise errors.method_not_allowed()
            raw = await request.read()
            opts = self._options(request)
            ctype = request.headers.get("Content-Type", "")
            if sub == "scale":
                return _json(self._patch_scale(rt, ns, name, ctype, raw, opts))
            res = reg.patch(rt, ns, name, ctype, raw, sub, opts)
            return _json(res.obj, res.code, res.warnings)
        if method == "DELETE":
            raw = await request.read()
            options: JSON = {}
            if raw.strip():
                try:
                    parsed = json.loads(raw)
                except ValueError as exc:
                    raise errors.bad_request(f"error decoding DeleteOptions: {exc}") from None
                if not isinstance(parsed, dict):
                    raise errors.bad_request("DeleteOptions must be an object")
                options = parsed
            for key in ("propagationPolicy", "gracePeriodSeconds", "orphanDependents"):
                if key in q:
                    value: Any = q[key]
                    if key == "orphanDependents":
                        value = value.lower() == "true"
                    options.setdefault(key, value)
            dry = bool(q.getall("dryRun", [])) or bool(options.get("dryRun"))
            self._options(request)
            if not name:
                listed = reg.delete_collection(
                    rt, route.namespace, label_selector=q.get("labelSelector", ""),
                    field_selector=q.get("fieldSelector", ""), options=options, dry_run=dry)
                return _json(listed)
            res = reg.delete(rt, ns, name, options, dry)
            return _json(res.obj, res.code)
        raise errors.method_not_allowed()

    def _finalize(self, rt: ResourceType, name: str, body: Any,
                  opts: WriteOptions) -> web.Response:
        old = self.registry.get(rt, "", name)
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        new = dict(old, spec=dict(old.get("spec") or {},
                                  finalizers=(body.get("spec") or {}).get("finalizers") or []))
        res = self.registry.update(rt, "", name, new, "", opts)
        return _json(res.obj, res.code)

    # ----------------------------------------------------------------- scale
    def _scale_view(self, rt: ResourceType, obj: JSON) -> JSON:
        assert rt.scale is not None
        meta = obj["metadata"]
        selector = ""
        if rt.crd and rt.scale.label_selector:
            found = tables.evaluate_jsonpath(obj, tables.compile_jsonpath(rt.scale.label_selector))
            selector = str(found[0]) if found else ""
        elif not rt.crd:
            selector = format_label_selector((obj.get("spec") or {}).get("selector"))
        spec_r = tables.evaluate_jsonpath(obj, tables.compile_jsonpath(rt.scale.spec_replicas))
        status_r = tables.evaluate_jsonpath(obj,
                                            tables.compile_jsonpath(rt.scale.status_replicas))
        status: JSON = {"replicas": int(status_r[0]) if status_r else 0}
        if selector:
            status["selector"] = selector
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                  "creationTimestamp") if k in meta},
                "spec": {"replicas": int(spec_r[0]) if spec_r else 0}, "status": status}

    def _write_scale(self, rt: ResourceType, ns: str, name: str, scale: Any,
                     opts: WriteOptions) -> JSON:
        assert rt.scale is not None
        if not isinstance(scale, dict):
            raise errors.bad_request("the body of the request must be a Scale object")
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.invalid("Scale", "autoscaling", name, [errors.field_invalid(
                "spec.replicas", replicas, "must be greater than or equal to 0")])
        obj = self.registry.get(rt, ns, name)
        want_rv = (scale.get("metadata") or {}).get("resourceVersion")
        if want_rv and want_rv != obj["metadata"]["resourceVersion"]:
            raise errors.stale_conflict(rt.plural, rt.group, name)
        body = json.loads(_dumps(obj))
        node = body
        parts = rt.scale.spec_replicas.lstrip(".").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = replicas
        res = self.registry.update(rt, ns, name, body, "", opts)
        return self._scale_view(rt, res.obj)

    def _update_scale(self, rt: ResourceType, ns: str, name: str, body: Any,
                      opts: WriteOptions) -> JSON:
        return self._write_scale(rt, ns, name, body, opts)

    def _patch_scale(self, rt: ResourceType, ns: str, name: str, ctype: str, raw: bytes,
                     opts: WriteOptions) -> JSON:
        from mailfleet_sandbox.kube import patching

        view = self._scale_view(rt, self.registry.get(rt, ns, name))
        kind = ctype.split(";")[0].strip()
        try:
            doc = json.loads(raw or b"null")
        except ValueError as exc:
            raise errors.bad_request(f"error decoding patch: {exc}") from None
        try:
            if kind == "application/merge-patch+json":
                patched = patching.merge_patch(view, doc)
            elif kind == "application/json-patch+json":
                patched = patching.json_patch(view, doc)
            elif kind == "application/strategic-merge-patch+json":
                patched = patching.strategic_merge_patch(view, doc)
            else:
                raise errors.ApiError(415, "UnsupportedMediaType",
                                      "the body of the request was in an unknown format - "
                                      "accepted media types include: "
                                      "application/json-patch+json, "
                                      "application/merge-patch+json, "
                                      "application/strategic-merge-patch+json")
        except patching.PatchBodyError as exc:
            raise errors.bad_request(str(exc)) from None
        except patching.PatchApplyError as exc:
            raise errors.ApiError(422, "Invalid", str(exc)) from None
        return self._write_scale(rt, ns, name, patched, opts)

    # ---------------------------------------------------------- list / render
    def _as(self, request: web.Request) -> str:
        accept = request.headers.get("Accept", "")
        for part in accept.split(","):
            params = {p.split("=", 1)[0].strip(): p.split("=", 1)[1].strip()
                      for p in part.split(";")[1:] if "=" in p}
            if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
                return "Table"
            if params.get("as") in ("PartialObjectMetadata", "PartialObjectMetadataList") \
                    and params.get("g") == "meta.k8s.io":
                return "Partial"
            if part.split(";")[0].strip() in ("application/json", "*/*", "application/*",
                                              "application/yaml"):
                return "json"
        if accept and "json" not in accept and "*/*" not in accept and "yaml" not in accept:
            raise errors.not_acceptable("only the following media types are accepted: "
                                        "application/json, application/yaml")
        return "json"

    def _columns(self, rt: ResourceType) -> tuple[list[JSON], Any]:
        if rt.crd:
            return rt.printer_columns, None
        if rt.plural in tables.BUILTIN_PRINTERS and rt.storage_key != "events.k8s.io/events":
            return tables.BUILTIN_PRINTERS[rt.plural]
        return [dict(tables.AGE_COLUMN)], None

    def _table(self, request: web.Request, rt: ResourceType, items: list[JSON], rv: str,
               cont: str = "", remaining: int | None = None) -> JSON:
        columns, printer = self._columns(rt)
        include = request.query.get("includeObject", "Metadata")
        return tables.build_table(items, columns, printer, include, rv, cont, remaining)

    def _render_one(self, request: web.Request, rt: ResourceType, obj: JSON) -> web.Response:
        mode = self._as(request)
        if mode == "Table":
            return _json(self._table(request, rt, [obj], obj["metadata"]["resourceVersion"]))
        if mode == "Partial":
            return _json(tables.partial_metadata(obj))
        return _json(obj)

    def _list(self, request: web.Request, rt: ResourceType, namespace: str | None) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", "0") or 0)
        except ValueError:
            raise errors.bad_request(f"invalid limit: {q.get('limit')}") from None
        mode = self._as(request)
        listed = self.registry.list(rt, namespace, label_selector=q.get("labelSelector", ""),
                                    field_selector=q.get("fieldSelector", ""), limit=limit,
                                    cont=q.get("continue", ""))
        meta = listed["metadata"]
        if mode == "Table":
            return _json(self._table(request, rt, listed["items"], meta["resourceVersion"],
                                     meta.get("continue", ""), meta.get("remainingItemCount")))
        if mode == "Partial":
            return _json({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                          "metadata": meta,
                          "items": [tables.partial_metadata(o) for o in listed["items"]]})
        return _json(listed)

    # ----------------------------------------------------------------- watch
    async def _watch(self, request: web.Request, rt: ResourceType, namespace: str | None,
                     field_selector: str) -> web.StreamResponse:
        q = request.query
        reg = self.registry
        matches = reg.matcher(rt, q.get("labelSelector", ""), field_selector)
        mode = self._as(request)
        bookmarks = q.get("allowWatchBookmarks", "").lower() == "true"
        try:
            timeout = float(q.get("timeoutSeconds", "1800") or 1800)
        except ValueError:
            raise errors.bad_request("invalid timeoutSeconds") from None
        rv_param = q.get("resourceVersion", "")
        initial_events = q.get("sendInitialEvents", "").lower() == "true"
        if initial_events and not bookmarks:
            raise errors.invalid("ListOptions", "meta.k8s.io", "", [errors.field_forbidden(
                "allowWatchBookmarks", "allowWatchBookmarks required when sendInitialEvents "
                "is true")])
        since: int | None = None
        if rv_param not in ("", "0") and not initial_events:
            try:
                since = int(rv_param)
            except ValueError:
                raise errors.bad_request(f"invalid resource version: {rv_param}") from None
        ns_filter = namespace if rt.namespaced else None
        resp = web.StreamResponse(status=200)
        resp.content_type = "application/json"
        resp.headers["Cache-Control"] = "no-cache, private"
        try:
            watcher = reg.store.watch(rt.storage_key, ns_filter, since)
        except Expired as exc:
            await resp.prepare(request)
            status = errors.gone_resource_version(exc.requested, exc.oldest).to_status()
            await resp.write((_dumps({"type": "ERROR", "object": status}) + "\n").encode())
            return resp
        initial: list[JSON] = []
        if since is None:
            initial = [o for o in reg.store.list(rt.storage_key, ns_filter) if matches(o)]
        start_rv = reg.store.rv
        await resp.prepare(request)

        def frame(kind: str, obj: JSON) -> bytes:
            if mode == "Table" and kind != "BOOKMARK":
                obj = self._table(request, rt, [obj], obj["metadata"]["resourceVersion"])
            return (_dumps({"type": kind, "object": obj}) + "\n").encode()

        def bookmark(rv: int, initial_end: bool = False) -> bytes:
            meta: JSON = {"resourceVersion": str(rv)}
            if initial_end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            return frame("BOOKMARK", {"kind": rt.kind, "apiVersion": rt.api_version,
                                      "metadata": meta})

        deadline = time.monotonic() + timeout
        try:
            for obj in initial:
                await resp.write(frame("ADDED", reg.present(rt, obj)))
            if initial_events:
                await resp.write(bookmark(start_rv, initial_end=True))
            last_sent = time.monotonic()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wait = min(remaining, self.bookmark_interval) if bookmarks else remaining
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), timeout=wait)
                except TimeoutError:
                    if bookmarks and watcher.queue.empty() and \
                            time.monotonic() - last_sent >= self.bookmark_interval * 0.9:
                        await resp.write(bookmark(reg.store.rv))
                        last_sent = time.monotonic()
                    continue
                if event is None:
                    break
                out = self._translate(event, matches)
                if out is not None:
                    await resp.write(frame(out, reg.present(rt, event.obj)))
                    last_sent = time.monotonic()
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            reg.store.unwatch(watcher)
        return resp

    @staticmethod
    def _translate(event: Event, matches: Any) -> str | None:
        """Selector-filtered watches see objects enter (ADDED) and leave (DELETED)."""
        now = matches(event.obj)
        if event.type == "ADDED":
            return "ADDED" if now else None
        if event.type == "DELETED":
            return "DELETED" if now or (event.old is not None and matches(event.old)) else None
        before = event.old is not None and matches(event.old)
        if before and now:
            return "MODIFIED"
        if now:
            return "ADDED"
        if before:
            return "DELETED"
        return None
