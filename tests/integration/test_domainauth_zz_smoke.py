import asyncio
from sandbox_fixtures.operator import wait_for, condition

async def test_smoke(operator, kube_api, dns_server):
    kube_api.create({"apiVersion": "mailfleet.io/v1alpha1", "kind": "DomainAuth",
        "metadata": {"name": "example-com", "namespace": "default"},
        "spec": {"domain": "example.com", "verification": {"interval": "1s"}}})
    def status():
        return kube_api.get("mailfleet.io/v1alpha1", "DomainAuth", "example-com", "default").get("status")
    st = await wait_for(lambda: (status() or {}).get("records"), timeout=10)
    print(st)
    for r in status()["records"]:
        dns_server.set_records(r["name"], r["type"], [r["value"]])
    await wait_for(lambda: (condition(kube_api.get("mailfleet.io/v1alpha1", "DomainAuth", "example-com", "default"), "Ready") or {}).get("status") == "True", timeout=10)
    import json; print(json.dumps(status(), indent=1))
    print([ (e["reason"], e["message"]) for e in kube_api.list("v1", "Event", "default")])
