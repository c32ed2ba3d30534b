"""Closed by default on the operator's side (pure): which credentials each listener uses, the
generated submission Secret, the rendered sender config and the pool's NetworkPolicy."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.logic import children, sender_config, submission_access
from mailfleet_sender import config as sc
from pydantic import ValidationError

POOL = children.PoolObjects(name="mail", namespace="apps", uid="u-1", replicas=2)
OPERATOR = submission_access.OperatorPods(
    namespace="mailfleet-system", labels={"app.kubernetes.io/component": "operator"}
)


def spec(**submission: Any) -> sp.SendingPoolSpec:
    return sp.SendingPoolSpec.model_validate({"submission": submission})


def render(pool_spec: sp.SendingPoolSpec) -> sc.SenderConfig:
    rendered = sender_config.render_config(sender_config.RenderInput(
        name="mail", namespace="apps", spec=pool_spec, active_pods=1, domain_auths={}))
    return sc.parse_config(rendered.text)  # what the pods read, through the sender's model


@pytest.mark.parametrize(
    ("submission", "smtp", "http", "generated"),
    [
        ({}, "mail-submission", "mail-submission", "mail-submission"),
        ({"smtp": {"authSecretRef": {"name": "users"}}}, "users", "mail-submission",
         "mail-submission"),
        ({"http": {"apiKeySecretRef": {"name": "keys", "key": "k"}}}, "mail-submission",
         "keys", "mail-submission"),
        ({"smtp": {"authSecretRef": {"name": "users"}},
          "http": {"apiKeySecretRef": {"name": "keys"}}}, "users", "keys", None),
        ({"allowUnauthenticated": True}, None, None, None),
    ],
    ids=[
        "a pool naming no Secret uses the generated one for both listeners",
        "an SMTP Secret overrides the generated one for SMTP only",
        "an API key Secret overrides the generated one for HTTP only",
        "a pool naming both Secrets needs no generated one",
        "allowUnauthenticated leaves listeners without a Secret open",
    ],
)
def test_each_listener_uses_its_own_secret_else_the_generated_one(
    submission: dict[str, Any], smtp: str | None, http: str | None, generated: str | None
) -> None:
    access = submission_access.credentials(spec(**submission), "mail")
    assert (access.smtp_secret, access.api_key_secret, access.generated) == (
        smtp, http, generated)


def test_a_pool_naming_no_secret_renders_a_closed_config_with_the_generated_credentials(
) -> None:
    cfg = render(spec())
    s = cfg.submission
    assert s.allow_unauthenticated is False
    assert s.credentials_file == f"{children.SECRETS_DIR}/smtp-auth"
    assert s.api_key_file == f"{children.SECRETS_DIR}/http-api-key/api-key"
    assert (s.admin_port, cfg.deliverability.public_port) == (8081, 8082)
    opened = render(spec(allowUnauthenticated=True, smtp={"fromDomains": ["Example.com"]},
                         http={"fromDomains": ["news.example.com"]}))
    assert opened.submission.allow_unauthenticated is True
    assert opened.submission.credentials_file is None and opened.submission.api_key_file is None
    assert opened.submission.smtp_from_domains == ["example.com"]
    assert opened.submission.http_from_domains == ["news.example.com"]


def test_the_generated_secret_holds_random_values_and_live_values_are_kept() -> None:
    first, second = (submission_access.new_submission_values() for _ in range(2))
    assert first != second and all(len(v) >= 24 for v in first.values())
    body = submission_access.build_submission_secret(POOL, first)
    assert body["metadata"]["name"] == "mail-submission"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert submission_access.submission_values(body) == first
    half = {"data": {"api-key": base64.b64encode(b"k").decode()}}
    assert submission_access.submission_values(half) == {}  # incomplete: made anew


def test_the_network_policy_opens_each_port_only_to_whom_it_serves() -> None:
    policy = submission_access.build_network_policy(spec(), POOL, OPERATOR)
    assert policy["metadata"]["name"] == "mail"
    body = policy["spec"]
    assert body["policyTypes"] == ["Ingress"]
    assert body["podSelector"]["matchLabels"] == children.selector_labels("mail")
    submission, admin, public = body["ingress"]
    assert submission == {"from": [{"podSelector": {}}],  # the pool's own namespace
                          "ports": [{"protocol": "TCP", "port": 587},
                                    {"protocol": "TCP", "port": 8080}]}
    assert admin["ports"] == [{"protocol": "TCP", "port": 8081}]
    assert admin["from"] == [
        {"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "mailfleet-system"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/component": "operator"}}},
        {"podSelector": {"matchLabels": children.selector_labels("mail")}},
    ]
    assert public == {"ports": [{"protocol": "TCP", "port": 8082},
                                {"protocol": "TCP", "port": 2525}]}


def test_allowed_from_becomes_the_submission_peers_in_cidr_form() -> None:
    pool_spec = spec(allowedFrom=[
        {"namespaceSelector": {"matchLabels": {"team": "shop"}},
         "podSelector": {"matchLabels": {"app": "checkout"}}},
        {"ipBlock": {"cidr": "10.20.0.7", "except": ["10.20.0.7/32"]}},
    ])
    peers = submission_access.build_network_policy(pool_spec, POOL, OPERATOR)["spec"][
        "ingress"][0]["from"]
    assert peers == [
        {"namespaceSelector": {"matchLabels": {"team": "shop"}},
         "podSelector": {"matchLabels": {"app": "checkout"}}},
        {"ipBlock": {"cidr": "10.20.0.7/32", "except": ["10.20.0.7/32"]}},
    ]


@pytest.mark.parametrize(
    "submission",
    [
        {"adminPort": 8080},
        {"publicPort": 587},
        {"http": {"port": 2525}},
        {"allowedFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"},
                          "podSelector": {"matchLabels": {"a": "b"}}}]},
        {"allowedFrom": [{}]},
        {"http": {"fromDomains": ["not a domain"]}},
    ],
    ids=[
        "the admin port on the HTTP submission port is refused",
        "the public port on the SMTP port is refused",
        "a submission port on the feedback port is refused",
        "an ipBlock mixed with a selector is refused",
        "an allowedFrom entry naming nobody is refused",
        "a fromDomains entry that is no domain is refused",
    ],
)
def test_specs_that_would_mix_listeners_or_peers_are_refused(
    submission: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError):
        spec(**submission)
