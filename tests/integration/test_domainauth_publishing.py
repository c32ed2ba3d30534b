"""SPF/DMARC verification against DNS, ExternalDNS mode, deletion, and bad input: the operator
against the API emulator and the sandbox DNS server."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from mailfleet_sandbox.dns import DNSServer
from mailfleet_sandbox.kube import ApiError, ApiServer
from sandbox_fixtures.operator import (
    API_VERSION,
    NAME,
    OperatorRunner,
    condition,
    create_domainauth,
    domainauth,
    events,
    install_crds,
    key_secrets,
    key_states,
    publisher,
    wait_for,
)


def cond(api: ApiServer, type_: str) -> dict[str, Any]:
    return condition(domainauth(api), type_) or {}


def spf_chain(dns_server: DNSServer, prefix: str, lookups: int) -> None:
    """`<prefix>0.test` -> ... each with an `a` and an `mx`: 3 lookups per level."""
    for level in range(lookups // 3):
        nxt = f" include:{prefix}{level + 1}.test" if level + 1 < lookups // 3 else ""
        dns_server.set_records(f"{prefix}{level}.test", "TXT", [f"v=spf1 a mx{nxt} -all"])


async def test_an_spf_record_needing_more_than_ten_lookups_is_not_valid_and_says_how_many(
    operator: OperatorRunner, kube_api: ApiServer, dns_server: DNSServer
) -> None:
    spf_chain(dns_server, "esp", 9)  # three levels of include + a + mx: 9 lookups
    spf_chain(dns_server, "crm", 6)  # two levels: 6 lookups
    create_domainauth(kube_api, {"spf": {"include": ["esp0.test", "crm0.test"]}})
    async with publisher(kube_api, dns_server):
        invalid = await wait_for(
            lambda: cond(kube_api, "SPFValid").get("reason") == "TooManyLookups"
            and cond(kube_api, "SPFValid"),
        )
    assert invalid["status"] == "False"
    assert "needs 15 DNS lookups" in invalid["message"]
    assert cond(kube_api, "Ready")["status"] == "False"


async def test_flattening_brings_the_spf_record_under_the_limit(
    operator: OperatorRunner, kube_api: ApiServer, dns_server: DNSServer
) -> None:
    for level in range(11):
        nxt = f" include:deep{level + 1}.test" if level < 10 else ""
        dns_server.set_records(f"deep{level}.test", "TXT",
                               [f"v=spf1 ip4:198.51.100.{level}{nxt} -all"])
    create_domainauth(kube_api, {"spf": {"include": ["deep0.test"], "flatten": True}})
    async with publisher(kube_api, dns_server):
        valid = await wait_for(lambda: cond(kube_api, "SPFValid").get("status") == "True"
                               and cond(kube_api, "SPFValid"))
    spf = next(r for r in domainauth(kube_api)["status"]["records"] if r["name"] == "example.com")
    assert "include:" not in spf["value"]
    assert "ip4:198.51.100.0" in spf["value"] and "ip4:198.51.100.10" in spf["value"]
    assert "0 of 10 DNS lookups" in valid["message"]


async def test_two_spf_records_at_the_domain_are_detected(
    operator: OperatorRunner, kube_api: ApiServer, dns_server: DNSServer
) -> None:
    create_domainauth(kube_api, {})
    async with publisher(kube_api, dns_server, hold=lambda n: n == "example.com"):
        await wait_for(lambda: cond(kube_api, "DKIMReady").get("status") == "True")
        ours = next(r["value"] for r in domainauth(kube_api)["status"]["records"]
                    if r["name"] == "example.com")
        dns_server.set_records("example.com", "TXT",
                               [ours, "v=spf1 include:old-esp.test -all", "google-site=x"])
        duplicate = await wait_for(
            lambda: cond(kube_api, "SPFValid").get("reason") == "DuplicateRecords"
            and cond(kube_api, "SPFValid"),
        )
    assert duplicate["status"] == "False"
    assert "2 SPF records at example.com" in duplicate["message"]


async def test_the_spf_record_combines_the_ips_of_every_pool_signing_for_the_domain(
    operator: OperatorRunner, kube_api: ApiServer, dns_server: DNSServer
) -> None:
    for pool, ip in (("pool-a", "203.0.113.10"), ("pool-b", "2001:db8::5")):
        kube_api.create({
            "apiVersion": API_VERSION, "kind": "SendingPool",
            "metadata": {"name": pool, "namespace": "default"},
            "spec": {"replicas": 0, "domains": [NAME],
                     "egress": {"ips": [{"address": ip, "heloName": f"{pool}.example.com"}]}},
        })
    create_domainauth(kube_api, {"spf": {"extraIPs": ["198.51.100.0/24"], "all": "-all"}})
    value = await wait_for(lambda: next(
        (r["value"] for r in domainauth(kube_api)["status"]["records"]
         if r["name"] == "example.com"), None))
    assert value == "v=spf1 ip4:198.51.100.0/24 ip4:203.0.113.10 ip6:2001:db8::5 -all"


async def test_externaldns_mode_writes_one_owned_dnsendpoint_and_deletion_removes_it(
    operator: OperatorRunner, kube_api: ApiServer, dns_server: DNSServer
) -> None:
    kube_api.create({
        "apiVersion": API_VERSION, "kind": "SendingPool",
        "metadata": {"name": "pool-a", "namespace": "default"},
        "spec": {"replicas": 0, "domains": [NAME],
                 "egress": {"ips": [{"address": "203.0.113.10", "heloName": "a.example.com"}]}},
    })
    create_domainauth(kube_api, {"publish": {"mode": "ExternalDNS", "ttl": 120},
                                 "dmarc": {"policy": "reject"}})

    def endpoint() -> dict[str, Any] | None:
        try:
            return kube_api.get("externaldns.k8s.io/v1alpha1", "DNSEndpoint", NAME, "default")
        except ApiError:
            return None

    def endpoint_names() -> set[str]:
        found = endpoint()
        return {e["dnsName"] for e in (found or {}).get("spec", {}).get("endpoints", [])}

    await wait_for(lambda: "mf-1._domainkey.example.com" in endpoint_names())
    found = endpoint()
    assert found is not None
    assert found["metadata"]["ownerReferences"][0]["uid"] == domainauth(kube_api)["metadata"]["uid"]
    by_name = {e["dnsName"]: e for e in found["spec"]["endpoints"]}
    assert set(by_name) == {"mf-1._domainkey.example.com", "example.com", "_dmarc.example.com"}
    assert by_name["_dmarc.example.com"]["targets"] == ["v=DMARC1; p=reject"]
    assert by_name["example.com"]["recordTTL"] == 120
    # Only DNS answers count: an endpoint written is not a record published.
    assert cond(kube_api, "Ready")["status"] == "False"

    kube_api.delete(API_VERSION, "DomainAuth", NAME, "default")
    await wait_for(lambda: endpoint() is None, message="DNSEndpoint removed")
    assert "StillReferenced" in events(kube_api)
    # keyRetention: Retain (the default): the private key outlives its DomainAuth.
    await kube_api.settle()
    assert set(key_secrets(kube_api)) == {"mf-1"}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        pytest.param({"domain": "not a domain"}, "spec.domain",
                     id="a domain that is not a domain is refused by the schema"),
        pytest.param({"dkim": {"selectorPrefix": "mf_1"}}, "spec.dkim.selectorPrefix",
                     id="a selector prefix with illegal characters is refused by the schema"),
        pytest.param({"bimi": {"logoURL": "http://example.com/logo.svg"}}, "spec.bimi.logoURL",
                     id="a BIMI logo URL that is not https is refused by the schema"),
        pytest.param({"dmarc": {"rua": ["https://example.com/r"]}}, "spec.dmarc.rua",
                     id="a DMARC rua that is not a mailto URI is refused by the schema"),
    ],
)
async def test_bad_specs_are_refused_before_the_operator_sees_them(
    kube_api: ApiServer, spec: dict[str, Any], field: str
) -> None:
    install_crds(kube_api)
    with pytest.raises(ApiError) as refused:
        create_domainauth(kube_api, spec)
    assert refused.value.code == 422
    assert field in str(refused.value)


async def test_bimi_without_an_enforcing_dmarc_policy_gives_a_clear_condition(
    operator: OperatorRunner, kube_api: ApiServer, dns_server: DNSServer
) -> None:
    create_domainauth(kube_api, {"bimi": {"logoURL": "https://example.com/logo.svg"}})
    async with publisher(kube_api, dns_server):
        bimi = await wait_for(lambda: cond(kube_api, "BIMIValid") or None)
        await wait_for(lambda: cond(kube_api, "DKIMReady").get("status") == "True")
    assert (bimi["status"], bimi["reason"]) == ("False", "InvalidSpec")
    assert "quarantine or reject" in bimi["message"]
    assert cond(kube_api, "Ready")["status"] == "False"
    assert cond(kube_api, "DMARCValid")["status"] == "True"


async def test_a_key_secret_edited_to_hold_garbage_is_reported_and_never_overwritten(
    operator: OperatorRunner, kube_api: ApiServer, dns_server: DNSServer
) -> None:
    create_domainauth(kube_api, {})
    async with publisher(kube_api, dns_server):
        await wait_for(lambda: key_states(kube_api) == {"mf-1": "Active"})
    garbage = base64.b64encode(b"-----BEGIN PRIVATE KEY-----\ngarbage\n").decode()
    secret = key_secrets(kube_api)["mf-1"]
    # Key Secrets are immutable: an edit of the key is refused by the API server...
    with pytest.raises(ApiError, match="immutable"):
        kube_api.patch("v1", "Secret", secret["metadata"]["name"],
                       {"data": {"private.pem": garbage}}, "default")
    # ...so garbage gets there only by replacing the Secret, labels and annotations kept.
    kube_api.delete("v1", "Secret", secret["metadata"]["name"], "default")
    replacement = {k: v for k, v in secret.items() if k in ("apiVersion", "kind", "type")}
    replacement["metadata"] = {k: secret["metadata"][k]
                               for k in ("name", "namespace", "labels", "annotations")}
    replacement["data"] = {**secret["data"], "private.pem": garbage}
    kube_api.create(replacement)
    invalid = await wait_for(
        lambda: cond(kube_api, "DKIMReady").get("reason") == "SecretInvalid"
        and cond(kube_api, "DKIMReady"),
    )
    assert invalid["status"] == "False"
    assert "example-com-dkim-mf-1" in invalid["message"]
    assert "garbage" not in invalid["message"]
    # Still there as the user left it, no second key, and the operator keeps reconciling.
    asked = dns_server.query_count("_dmarc.example.com", "TXT")
    await wait_for(lambda: dns_server.query_count("_dmarc.example.com", "TXT") >= asked + 2)
    secrets = key_secrets(kube_api)
    assert set(secrets) == {"mf-1"}
    assert secrets["mf-1"]["data"]["private.pem"] == garbage


def gone(api: ApiServer) -> bool:
    try:
        domainauth(api)
    except ApiError:
        return True
    return False


async def test_a_deleted_and_recreated_domainauth_keeps_and_adopts_its_private_keys(
    operator: OperatorRunner, kube_api: ApiServer, dns_server: DNSServer
) -> None:
    create_domainauth(kube_api, {})
    async with publisher(kube_api, dns_server):
        await wait_for(lambda: key_states(kube_api) == {"mf-1": "Active"})
    before = key_secrets(kube_api)["mf-1"]
    assert not before["metadata"].get("ownerReferences")  # keyRetention: Retain
    assert before.get("immutable") is True

    kube_api.delete(API_VERSION, "DomainAuth", NAME, "default")
    await wait_for(lambda: gone(kube_api), message="DomainAuth deleted")
    await kube_api.settle()  # garbage collection has had its chance
    kept = key_secrets(kube_api)
    assert set(kept) == {"mf-1"}
    assert kept["mf-1"]["data"] == before["data"]
    assert "KeysRetained" in events(kube_api)

    # Re-created (by a GitOps tool, a restore, a mistake): the same key signs on.
    create_domainauth(kube_api, {})
    async with publisher(kube_api, dns_server):
        await wait_for(lambda: key_states(kube_api) == {"mf-1": "Active"})
    after = key_secrets(kube_api)
    assert set(after) == {"mf-1"}
    assert after["mf-1"]["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["mf-1"]["data"]["private.pem"] == before["data"]["private.pem"]
    assert events(kube_api).count("KeyGenerated") == 1


async def test_key_retention_delete_owns_the_keys_so_they_go_with_the_domainauth(
    operator: OperatorRunner, kube_api: ApiServer, dns_server: DNSServer
) -> None:
    create_domainauth(kube_api, {})
    await wait_for(lambda: "mf-1" in key_secrets(kube_api))
    kube_api.patch(API_VERSION, "DomainAuth", NAME,
                   {"spec": {"dkim": {"keyRetention": "Delete"}}}, "default")
    uid = domainauth(kube_api)["metadata"]["uid"]
    await wait_for(
        lambda: [o["uid"] for o in key_secrets(kube_api)["mf-1"]["metadata"].get(
            "ownerReferences") or []] == [uid],
        message="the DomainAuth owns its key",
    )
    kube_api.delete(API_VERSION, "DomainAuth", NAME, "default")
    await wait_for(lambda: gone(kube_api), message="DomainAuth deleted")
    await kube_api.settle()
    await wait_for(lambda: not key_secrets(kube_api), message="key Secrets collected")
