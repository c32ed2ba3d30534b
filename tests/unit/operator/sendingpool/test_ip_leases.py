"""Egress-IP Leases as the API server stores them: what the operator writes it must read back
the same (holder, fencing epoch, duration, precondition), anything not its own is ignored, and
the pool that named an IP first keeps it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from mailfleet_operator.logic import ip_leases

T0 = datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


def written(**changes: object) -> dict[str, object]:
    arguments: dict[str, object] = {
        "address": "192.0.2.10",
        "namespace": "mail",
        "pool": "bulk",
        "holder": ("bulk-0", "uid-0"),
        "duration": 17,
        "epoch": 4,
        "now": T0,
        "acquired": T0 - timedelta(minutes=5),
        "resource_version": "812",
    }
    arguments.update(changes)
    return ip_leases.build_lease(**arguments)  # type: ignore[arg-type]


def test_a_lease_name_is_a_dns_subdomain_for_ipv4_and_ipv6() -> None:
    assert ip_leases.lease_name("192.0.2.10") == "mailfleet-ip-192.0.2.10"
    assert ip_leases.lease_name("2001:db8::1") == (
        "mailfleet-ip-2001-0db8-0000-0000-0000-0000-0000-0001"
    )
    with pytest.raises(ValueError):
        ip_leases.lease_name("not-an-ip")


def test_a_holder_is_the_pod_and_its_uid_and_only_that_form_names_one() -> None:
    assert ip_leases.holder_identity("bulk-0", "uid-0") == "bulk-0/uid-0"
    assert ip_leases.parse_holder("bulk-0/uid-0") == ("bulk-0", "uid-0")
    assert ip_leases.parse_holder("bulk-0/uid/with/slashes") == ("bulk-0", "uid/with/slashes")
    for nobody in (None, "", "bulk-0"):
        assert ip_leases.parse_holder(nobody) is None


def test_a_held_lease_reads_back_as_written() -> None:
    lease = ip_leases.read_lease(written())
    assert lease == ip_leases.IPLease(
        address="192.0.2.10", pool="bulk", holder=("bulk-0", "uid-0"), duration=17.0, epoch=4,
        resource_version="812",
    )


def test_a_held_lease_carries_the_renewal_and_the_first_acquisition_in_utc_microtime() -> None:
    obj = written()
    spec = obj["spec"]
    assert spec == {
        "leaseDurationSeconds": 17,
        "leaseTransitions": 4,
        "holderIdentity": "bulk-0/uid-0",
        "renewTime": "2025-01-01T12:00:00.123456Z",
        "acquireTime": "2025-01-01T11:55:00.123456Z",
    }
    assert obj["apiVersion"] == "coordination.k8s.io/v1" and obj["kind"] == "Lease"
    assert obj["metadata"] == {
        "name": "mailfleet-ip-192.0.2.10",
        "namespace": "mail",
        "labels": {
            "mailfleet.io/pool": "bulk", "app.kubernetes.io/managed-by": "mailfleet-operator",
        },
        "annotations": {"mailfleet.io/egress-ip": "192.0.2.10"},
        "resourceVersion": "812",
    }


def test_a_first_grant_was_acquired_now() -> None:
    spec = written(acquired=None)["spec"]
    assert spec["acquireTime"] == spec["renewTime"] == "2025-01-01T12:00:00.123456Z"


def test_a_released_lease_keeps_its_epoch_and_names_no_holder() -> None:
    obj = written(holder=None, resource_version=None)
    assert obj["spec"] == {"leaseDurationSeconds": 17, "leaseTransitions": 4}
    assert "resourceVersion" not in obj["metadata"]
    lease = ip_leases.read_lease(obj)
    assert lease is not None
    assert (lease.holder, lease.epoch, lease.resource_version) == (None, 4, "")


def test_a_lease_without_duration_or_epoch_reads_as_zero() -> None:
    obj = written()
    obj["spec"] = {}
    lease = ip_leases.read_lease(obj)
    assert lease is not None and (lease.duration, lease.epoch, lease.holder) == (0.0, 0, None)
    del obj["spec"]
    assert ip_leases.read_lease(obj) == lease


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda o: o["metadata"].pop("annotations"), id="no address annotation"),
        pytest.param(lambda o: o["metadata"]["annotations"].update({"mailfleet.io/egress-ip": ""}),
                     id="an empty address"),
        pytest.param(lambda o: o["metadata"].update({"name": "mailfleet-ip-192.0.2.11"}),
                     id="a name that is not the address's"),
        pytest.param(lambda o: o["metadata"]["annotations"].update(
            {"mailfleet.io/egress-ip": "bogus"}), id="an address that is no IP"),
        pytest.param(lambda o: o["spec"].update({"leaseDurationSeconds": "soon"}),
                     id="a duration that is no number"),
        pytest.param(lambda o: o["spec"].update({"leaseTransitions": [1]}),
                     id="an epoch that is no number"),
        pytest.param(lambda o: o.pop("metadata"), id="no metadata at all"),
    ],
)
def test_a_lease_that_is_not_ours_or_is_mangled_is_ignored(mangle: object) -> None:
    obj = written()
    mangle(obj)  # type: ignore[operator]
    assert ip_leases.read_lease(obj) is None


def test_a_lease_without_pool_label_reads_without_pool() -> None:
    obj = written()
    obj["metadata"].pop("labels")  # type: ignore[attr-defined]
    lease = ip_leases.read_lease(obj)
    assert lease is not None and lease.pool is None


def test_a_holder_may_send_for_the_ttl_plus_one_request_timeout_rounded_up() -> None:
    assert ip_leases.lease_duration_seconds(10, 2.5) == 13
    assert ip_leases.lease_duration_seconds(10, 0) == 10
    assert ip_leases.lease_duration_seconds(0.2, 0.3) == 1
    assert ip_leases.lease_duration_seconds(0, 0) == 1


def test_a_reader_waits_the_duration_plus_skew_from_when_it_first_saw_the_version() -> None:
    lease = ip_leases.read_lease(written())
    assert lease is not None
    seen = ip_leases.Observation(resource_version="812", seen_at=1000.0)
    assert ip_leases.wait_deadline(lease, seen, skew=2.0) == 1019.0


def pool(name: str, created: str, *addresses: object, namespace: str | None = "mail") -> dict:
    meta: dict[str, object] = {"name": name, "creationTimestamp": created}
    if namespace is not None:
        meta["namespace"] = namespace
    ips = [{"address": a} if isinstance(a, str) else a for a in addresses]
    return {"metadata": meta, "spec": {"egress": {"ips": ips}}}


def test_the_oldest_pool_naming_an_ip_owns_it_whatever_the_order_read() -> None:
    older = pool("older", "2025-01-01T00:00:00Z", "192.0.2.1", "192.0.2.2")
    newer = pool("newer", "2025-02-01T00:00:00Z", "192.0.2.2", "192.0.2.3")
    expected = {
        "192.0.2.1": ("mail", "older"),
        "192.0.2.2": ("mail", "older"),
        "192.0.2.3": ("mail", "newer"),
    }
    assert ip_leases.ip_owners([older, newer]) == expected
    assert ip_leases.ip_owners([newer, older]) == expected


def test_pools_created_in_the_same_second_are_ordered_by_namespace_then_name() -> None:
    same = "2025-01-01T00:00:00Z"
    a = pool("b-pool", same, "192.0.2.1", namespace="a")
    b = pool("a-pool", same, "192.0.2.1", namespace="b")
    c = pool("a-pool", same, "192.0.2.1", namespace=None)  # the default namespace
    assert ip_leases.ip_owners([b, a]) == {"192.0.2.1": ("a", "b-pool")}
    assert ip_leases.ip_owners([c, b]) == {"192.0.2.1": ("b", "a-pool")}
    assert ip_leases.ip_owners([b, c]) == {"192.0.2.1": ("b", "a-pool")}
    d = pool("a-pool", same, "192.0.2.1", namespace="default")
    e = pool("b-pool", same, "192.0.2.1", namespace=None)
    assert ip_leases.ip_owners([e, d]) == {"192.0.2.1": ("default", "a-pool")}


def test_entries_without_an_address_own_nothing() -> None:
    broken = pool("broken", "2025-01-01T00:00:00Z", "192.0.2.9", {"address": 5}, {"other": "x"})
    broken["spec"]["egress"]["ips"].append("192.0.2.8")  # not a mapping: no address
    assert ip_leases.ip_owners([broken]) == {"192.0.2.9": ("mail", "broken")}
    assert ip_leases.ip_owners([{"metadata": {"name": "empty"}}, {}]) == {}


def test_an_entry_without_an_address_does_not_hide_the_ips_after_it() -> None:
    listed = pool("listed", "2025-01-01T00:00:00Z", {"address": None}, "192.0.2.7")
    assert ip_leases.ip_owners([listed]) == {"192.0.2.7": ("mail", "listed")}
