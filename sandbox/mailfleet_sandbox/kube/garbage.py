"""The garbage collector, in-process: dependents go with their owners (Background,
Foreground, Orphan propagation), and a dependent whose owners are all absent is deleted
even when no owner was ever deleted.

"Absent" is what kube-controller-manager's GC means: the ownerReference is looked up by its
kind and name (in the dependent's namespace when the owner kind is namespaced) and the
object found must carry the reference's uid. A kind the server does not serve cannot be
verified, so that reference counts as present (the real GC retries instead of deleting).
"""

from __future__ import annotations

import copy
from typing import Any

from mailfleet_sandbox.kube import errors
from mailfleet_sandbox.kube.registry import Registry
from mailfleet_sandbox.kube.resources import ResourceType

JSON = dict[str, Any]


class GarbageCollector:
    """Owner-reference bookkeeping over a Registry, plus the small writes it needs."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.store = registry.store

    def rt_for(self, storage_key: str) -> ResourceType | None:
        for rt in self.registry.types.values():
            if rt.storage_key == storage_key and rt.storage_version:
                return rt
        return None

    def delete(self, storage_key: str, obj: JSON, policy: str = "Background") -> None:
        rt = self.rt_for(storage_key)
        if rt is None:
            return
        meta = obj["metadata"]
        try:
            self.registry.delete(rt, meta.get("namespace", ""), meta["name"],
                                 {"propagationPolicy": policy})
        except errors.ApiError as exc:
            if exc.code != 404:
                raise

    def set_meta(self, storage_key: str, obj: JSON, **changes: Any) -> None:
        rt = self.rt_for(storage_key)
        if rt is None:
            return
        body = copy.deepcopy(obj)
        body["apiVersion"], body["kind"] = rt.api_version, rt.kind
        body["metadata"].update(changes)
        meta = body["metadata"]
        self.registry.update(rt, meta.get("namespace", ""), meta["name"], body)

    def collect_dependents(self, owner_uid: str) -> None:
        """Background propagation: an owner is gone, so are dependents it alone owned."""
        if self.store.exists_uid(owner_uid):
            return
        for key, dep in self.store.dependents(owner_uid):
            refs = dep["metadata"].get("ownerReferences") or []
            alive = [r for r in refs if r.get("uid") != owner_uid
                     and self.store.exists_uid(r.get("uid", ""))]
            if alive:
                self.set_meta(key, dep, ownerReferences=[
                    r for r in refs if r.get("uid") != owner_uid])
            elif not dep["metadata"].get("deletionTimestamp"):
                self.delete(key, dep)

    def finish_deletion(self, key: str, ns: str, name: str) -> None:
        """Foreground: delete dependents, then drop the finalizer; Orphan: release them."""
        obj = self.store.get(key, ns, name)
        if obj is None or not obj["metadata"].get("deletionTimestamp"):
            return
        fins = list(obj["metadata"].get("finalizers") or [])
        uid = obj["metadata"]["uid"]
        deps = self.store.dependents(uid)
        if "orphan" in fins:
            for dkey, dep in deps:
                self.set_meta(dkey, dep, ownerReferences=[
                    r for r in dep["metadata"].get("ownerReferences") or [] if r.get("uid") != uid])
            fins.remove("orphan")
            self.set_meta(key, self.store.get(key, ns, name) or obj, finalizers=fins)
            return
        if "foregroundDeletion" in fins:
            blocking = False
            for dkey, dep in deps:
                refs = dep["metadata"].get("ownerReferences") or []
                alive = [r for r in refs if r.get("uid") != uid
                         and self.store.exists_uid(r.get("uid", ""))]
                if alive:
                    self.set_meta(dkey, dep, ownerReferences=[
                        r for r in refs if r.get("uid") != uid])
                    continue
                blocking = True
                if not dep["metadata"].get("deletionTimestamp"):
                    self.delete(dkey, dep, "Foreground")
            if not blocking and not self.store.dependents(uid):
                fins.remove("foregroundDeletion")
                self.set_meta(key, self.store.get(key, ns, name) or obj, finalizers=fins)

    def owner_absent(self, dependent: JSON, ref: JSON) -> bool:
        """Whether the object a reference names is gone (or is another object now)."""
        rt = self.registry.find_kind(str(ref.get("apiVersion", "")), str(ref.get("kind", "")))
        if rt is None:
            return False
        ns = (dependent["metadata"].get("namespace") or "") if rt.namespaced else ""
        if rt.namespaced and not ns:
            return True  # a cluster-scoped dependent cannot have a namespaced owner
        owner = self.store.get(rt.storage_key, ns, str(ref.get("name", "")))
        return owner is None or owner["metadata"].get("uid") != ref.get("uid")

    def verify_owners(self, key: str, ns: str, name: str) -> None:
        """A dependent whose owners are all absent is deleted; absent references beside a
        live owner are dropped (attemptToDeleteItem's dangling references)."""
        obj = self.store.get(key, ns, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return
        refs = obj["metadata"].get("ownerReferences") or []
        dangling = [r for r in refs if self.owner_absent(obj, r)]
        if not dangling:
            return
        if len(dangling) == len(refs):
            self.delete(key, obj)
        else:
            self.set_meta(key, obj, ownerReferences=[r for r in refs if r not in dangling])
