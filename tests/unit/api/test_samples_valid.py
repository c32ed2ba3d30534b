"""Every sample a user applies first is accepted by the API server's schema and the models."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml
from mailfleet_operator.api import crds, domainauth, ipwarmup, kinds, providers, sendingpool
from mailfleet_sender import units
from unit.api import openapi_rules

SAMPLES = pathlib.Path(__file__).resolve().parents[3] / "samples"


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(SAMPLES.glob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
            if doc:
                docs.append((f"{path.name}#{index}", doc))
    return docs


DOCUMENTS = _documents()


def _sample(kind: str) -> dict[str, Any]:
    return next(doc for _, doc in DOCUMENTS if doc["kind"] == kind)


def test_samples_cover_every_kind() -> None:
    assert sorted({doc["kind"] for _, doc in DOCUMENTS}) == sorted(kinds.BY_KIND)


@pytest.mark.parametrize(("name", "doc"), DOCUMENTS, ids=[name for name, _ in DOCUMENTS])
def test_sample_passes_the_generated_openapi_schema(name: str, doc: dict[str, Any]) -> None:
    schema = crds.openapi_schema(doc["kind"])
    assert doc["apiVersion"] == "mailfleet.io/v1alpha1"
    assert openapi_rules.validate_object(schema, doc) == []


@pytest.mark.parametrize(("name", "doc"), DOCUMENTS, ids=[name for name, _ in DOCUMENTS])
def test_sample_passes_the_pydantic_models(name: str, doc: dict[str, Any]) -> None:
    model = kinds.BY_KIND[doc["kind"]].model
    parsed = model.model_validate(doc)
    # Round trip: dumping gives back every field the user wrote, spelled the same way.
    dumped = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert _is_subset(doc["spec"], dumped["spec"])


def _is_subset(small: Any, big: Any) -> bool:
    if isinstance(small, dict):
        return all(k in big and _is_subset(v, big[k]) for k, v in small.items())
    if isinstance(small, list):
        return len(small) == len(big) and all(
            _is_subset(a, b) for a, b in zip(small, big, strict=True)
        )
    return bool(small == big)


def test_domainauth_sample_is_the_documented_example_com_setup() -> None:
    spec = domainauth.DomainAuth.model_validate(_sample("DomainAuth")).spec
    assert spec.domain == "example.com"
    assert spec.dkim.algorithm == "rsa-2048"
    assert units.parse_duration(spec.dkim.rotate_every).days == 90
    assert spec.dmarc.policy == "quarantine"
    assert spec.dmarc.rua and all(uri.startswith("mailto:") for uri in spec.dmarc.rua)


def test_sendingpool_sample_has_three_documentation_ips_and_both_classes() -> None:
    spec = sendingpool.SendingPool.model_validate(_sample("SendingPool")).spec
    assert [ip.address for ip in spec.egress.ips] == [
        "203.0.113.10",
        "203.0.113.11",
        "203.0.113.12",
    ]
    assert {c.name for c in spec.classes} == {"transactional", "marketing"}
    assert spec.throttling.rate is not None
    assert units.parse_rate(spec.throttling.rate).per_second == 100
    table = providers.effective_providers(spec.throttling)
    gmail = providers.match_provider("alt1.aspmx.l.google.com", table)
    assert gmail is not None and gmail.max_connections == 12  # the sample's override wins


def test_ipwarmup_sample_is_the_classic_linear_schedule() -> None:
    spec = ipwarmup.IPWarmup.model_validate(_sample("IPWarmup")).spec
    assert spec.schedule.linear is not None
    assert (spec.schedule.linear.start, spec.schedule.linear.increment) == (500, 500)
    assert spec.target == 100_000
    assert spec.pool_ref.name == _sample("SendingPool")["metadata"]["name"]
