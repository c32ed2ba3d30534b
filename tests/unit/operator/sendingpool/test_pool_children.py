"""Children builders and config rendering of a SendingPool (pure)."""

from __future__ import annotations

import datetime

import pytest
from mailfleet_operator.api import domainauth as da
from mailfleet_operator.api import sendingpool as sp
from mailfleet_operator.logic import children, sender_config
from mailfleet_sender import config as sc

SPEC = sp.SendingPoolSpec.model_validate(
    {
        "replicas": 4,
        "standbyReplicas": 1,
        "storage": {"size": "5Gi", "storageClassName": "fast"},
        "egress": {"ips": [{"address": "192.0.2.1", "heloName": "mta1.example.com"}]},
        "throttling": {
            "rate": "100/s",
            "providers": [
                {
                    "name": "gmail",
                    "mxPatterns": ["*.google.com"],
                    "messagesPerSecond": 20,
                    "maxConnections": 2,
                }
            ],
        },
        "domains": ["example-com", "missing", "unready"],
    }
)
POOL = children.PoolObjects(name="mail", namespace="ns", uid="u-1", replicas=5)


def test_the_statefulset_runs_restricted_pods_with_probes_and_a_spool_claim() -> None:
    sts = children.build_statefulset(SPEC, POOL)
    assert sts["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert sts["spec"]["replicas"] == 5
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = container["securityContext"]
    assert security["runAsNonRoot"] and not security["allowPrivilegeEscalation"]
    assert security["readOnlyRootFilesystem"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == "5Gi"
    assert claim["storageClassName"] == "fast"
    config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert "subPath" not in config_mount  # subPath mounts never see updates: no live reload
    assert "annotations" not in sts["spec"]["template"]["metadata"]  # no hash: no restarts


def test_children_have_deterministic_names_and_the_same_bytes_every_time() -> None:
    first = children.build_children(SPEC, POOL, config_yaml="a: 1\n")
    again = children.build_children(SPEC, POOL, config_yaml="a: 1\n")
    assert first == again
    assert [(c["kind"], c["metadata"]["name"]) for c in first] == [
        ("ConfigMap", "mail-config"),
        ("Service", "mail-pods"),
        ("Service", "mail"),
        ("Service", "mail-public"),
        ("PodDisruptionBudget", "mail"),
        ("StatefulSet", "mail"),
    ]
    headless = first[1]["spec"]
    # Peers find each other (suppression replication, hand-off) while not Ready too.
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert headless["selector"] == children.selector_labels("mail")
    assert {p["name"] for p in first[2]["spec"]["ports"]} == {"smtp", "http"}


def test_the_client_service_routes_only_to_pods_labelled_serving() -> None:
    """Standbys hold no IP: mail submitted to them would wait, so the Service skips them."""
    service = children.build_client_service(SPEC, POOL)
    assert service["spec"]["selector"] == {
        **children.selector_labels("mail"),
        "mailfleet.io/serving": "true",
    }
    # The pods get the label from the operator, never from the template: a new pod holds no
    # IP, and the StatefulSet selector must match every pod.
    sts = children.build_statefulset(SPEC, POOL)
    assert "mailfleet.io/serving" not in sts["spec"]["template"]["metadata"]["labels"]
    assert "mailfleet.io/serving" not in sts["spec"]["selector"]["matchLabels"]


def test_dkim_keys_come_from_one_pool_secret_mounted_once_at_a_fixed_path() -> None:
    """A rotation only rewrites the pool's DKIM Secret: the pod template is the same for any
    set of keys, so no rolling update is needed (or can stall)."""
    sts = children.build_statefulset(SPEC, POOL)
    pod = sts["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "dkim")
    assert volume["secret"]["secretName"] == "mail-dkim"
    assert "items" not in volume["secret"]  # every key the Secret holds, whatever its name
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "dkim")
    assert mount == {"name": "dkim", "mountPath": "/etc/mailfleet/dkim", "readOnly": True}
    assert "subPath" not in mount  # subPath mounts never see updates
    assert not [v for v in pod["volumes"] if v["name"].startswith("dkim-")]

    secret = children.build_dkim_secret(POOL, data={"b.pem": "Qg==", "a.pem": "QQ=="})
    assert secret["metadata"]["name"] == "mail-dkim"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert list(secret["data"]) == ["a.pem", "b.pem"]  # deterministic bytes
    assert children.dkim_key_path("example-com-dkim-mf-2") == (
        "/etc/mailfleet/dkim/example-com-dkim-mf-2.pem"
    )


def domain(name: str, *, ready: bool, active: bool) -> da.DomainAuth:
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    return da.DomainAuth.model_validate(
        {
            "metadata": {"name": name},
            "spec": {"domain": f"{name}.test".replace("-", ".")},
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True" if ready else "False",
                        "reason": "X",
                        "lastTransitionTime": now.isoformat(),
                    }
                ],
                "dkim": {
                    "keys": [
                        {
                            "selector": "s1",
                            "algorithm": "ed25519",
                            "state": "Active" if active else "Pending",
                            "secretName": f"{name}-s1",
                        }
                    ]
                },
            },
        }
    )


@pytest.mark.parametrize(("pods", "rate", "gmail"), [(1, "100/s", 20.0), (4, "25/s", 5.0)])
def test_rendered_config_divides_limits_and_signs_only_with_active_keys(
    pods: int, rate: str, gmail: float
) -> None:
    rendered = sender_config.render_config(
        sender_config.RenderInput(
            name="mail",
            namespace="ns",
            spec=SPEC,
            active_pods=pods,
            domain_auths={
                "example-com": domain("example-com", ready=True, active=True),
                "missing": None,
                "unready": domain("unready", ready=False, active=False),
            },
        )
    )
    config = sc.parse_config(rendered.text)  # the sender accepts what we render
    assert config.throttles.rate == rate
    provider = next(p for p in config.throttles.providers if p.name == "gmail")
    assert provider.messages_per_second == gmail
    assert provider.max_connections == max(1, 2 // pods)
    assert [d.domain for d in config.dkim.domains] == ["example.com.test"]
    key = config.dkim.domains[0].keys[0]
    assert key.algorithm == "ed25519"
    assert key.key_file == "/etc/mailfleet/dkim/example-com-s1.pem"  # in the pool's Secret
    assert config.dkim.require_signature  # no key: mail held, never sent unsigned
    assert [(p.name, p.reason) for p in rendered.problems] == [
        ("missing", "DomainAuthNotFound"),
        ("unready", "NoActiveKey"),
    ]
    # DKIM keys are no per-key mounts any more; the pool's link keys and peer token are, and
    # the generated submission Secret's two keys, one per listener (closed by default).
    assert [(m.secret_name, m.items) for m in rendered.mounts] == [
        ("mail-links", ()), ("mail-peers", ("token",)),
        ("mail-submission", ("mailfleet",)), ("mail-submission", ("api-key",))]


def test_the_pod_runs_the_senders_own_command_with_its_identity_and_the_rendered_paths() -> None:
    """The container must start what the sender accepts, listen where the probes look, and
    read the admin token where the Secret is mounted (a mismatch is a pod that never
    becomes Ready)."""
    import argparse

    from mailfleet_operator import settings
    from mailfleet_sandbox import container_env
    from mailfleet_sender import cli

    sts = children.build_statefulset(SPEC, POOL)
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "mailfleet_sender"]
    parser = argparse.ArgumentParser()
    cli.add_run_arguments(parser)  # what `python -m mailfleet_sender` parses
    args = parser.parse_args(container["args"])
    config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert args.config == f"{config_mount['mountPath']}/{children.CONFIG_FILE}"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {
        "POD_IP": "status.podIP",  # the sender binds its listeners there
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
    }

    rendered = sc.parse_config(
        sender_config.render_config(
            sender_config.RenderInput(
                name="mail", namespace="ns", spec=SPEC, active_pods=1, domain_auths={}
            )
        ).text
    )
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    sub, d = rendered.submission, rendered.deliverability
    assert ports == {"http": sub.http_port, "smtp": sub.smtp_port, "admin": sub.admin_port,
                     "public": d.public_port, "feedback": d.feedback_port}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "admin"  # never the submission port
    admin_mount = next(m for m in container["volumeMounts"] if m["name"] == "admin")
    assert rendered.admin_token_file == f"{admin_mount['mountPath']}/{children.ADMIN_TOKEN_KEY}"
    assert rendered.spool_dir == next(
        m["mountPath"] for m in container["volumeMounts"] if m["name"] == "spool"
    )
    # The default image is one the sandbox node agent runs as `python -m mailfleet_sender`.
    default = settings.Settings().sender_image
    assert any(
        part in default and argv[-1] == "mailfleet_sender"
        for part, argv in container_env.DEFAULT_IMAGE_SUBSTRINGS
    )


def rotating_domain(keys: list[tuple[str, str, str]]) -> da.DomainAuth:
    """A Ready DomainAuth of example.com whose status lists `(selector, algorithm, state)`,
    newest generation first, as the DomainAuth controller writes it."""
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    return da.DomainAuth.model_validate(
        {
            "metadata": {"name": "example-com"},
            "spec": {"domain": "example.com"},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "X",
                     "lastTransitionTime": now.isoformat()}
                ],
                "dkim": {
                    "keys": [
                        {"selector": s, "algorithm": a, "state": st,
                         "secretName": f"example-com-dkim-{s}"}
                        for s, a, st in keys
                    ]
                },
            },
        }
    )


@pytest.mark.parametrize(
    ("keys", "rendered", "copied"),
    [
        pytest.param(
            [("mf-2", "rsa-2048", "Active"), ("mf-1", "rsa-2048", "Retiring")],
            ["mf-2", "mf-1"],
            ["mf-2", "mf-1"],
            id="right after a switch the new Active key comes first and the Retiring one is "
            "the fallback of pods whose copy of the new key has not arrived yet",
        ),
        pytest.param(
            [("mf-3", "rsa-2048", "Published"), ("mf-2", "rsa-2048", "Active"),
             ("mf-1", "rsa-2048", "Retired")],
            ["mf-2"],
            ["mf-2", "mf-3"],
            id="a Published key is copied ahead of its switch but not signed with, and a "
            "Retired key is neither",
        ),
        pytest.param(
            [("mf-2", "rsa-2048", "Active"), ("mf-2-ed", "ed25519", "Active"),
             ("mf-1", "rsa-2048", "Retiring"), ("mf-1-ed", "ed25519", "Retiring")],
            ["mf-2", "mf-2-ed", "mf-1", "mf-1-ed"],
            ["mf-2", "mf-2-ed", "mf-1", "mf-1-ed"],
            id="dual keys keep the preference order per algorithm",
        ),
    ],
)
def test_keys_are_rendered_in_preference_order(
    keys: list[tuple[str, str, str]], rendered: list[str], copied: list[str]
) -> None:
    objects = {"example-com": rotating_domain(keys)}
    dkim, problems = sender_config.render_dkim(["example-com"], objects)
    assert problems == []
    [domain_keys] = [d.keys for d in dkim.domains]
    assert [k.selector for k in domain_keys] == rendered
    assert all(k.key_file == children.dkim_key_path(f"example-com-dkim-{k.selector}")
               for k in domain_keys)
    assert sender_config.dkim_key_secrets(["example-com"], objects) == [
        f"example-com-dkim-{s}" for s in copied
    ]


def test_a_key_whose_secret_could_not_be_copied_is_left_out_and_reported() -> None:
    objects = {"example-com": rotating_domain(
        [("mf-2", "rsa-2048", "Active"), ("mf-1", "rsa-2048", "Retiring")]
    )}
    dkim, problems = sender_config.render_dkim(
        ["example-com"], objects, available={"example-com-dkim-mf-1"}
    )
    assert [k.selector for d in dkim.domains for k in d.keys] == ["mf-1"]
    assert [p.reason for p in problems] == ["KeySecretMissing"]
    dkim, problems = sender_config.render_dkim(["example-com"], objects, available=set())
    assert dkim.domains == []  # nothing to sign with: the senders hold this domain's mail
    assert [p.reason for p in problems] == ["KeySecretMissing"]


def test_transport_security_of_the_pool_and_its_providers_reaches_the_sender() -> None:
    spec = SPEC.model_copy(update={"transport_security": sp.TransportSecurity.model_validate({
        "requireTLS": True, "minVersion": "TLSv1.3", "mtaSts": True,
        "daneResolver": {"address": "10.0.0.10"},
        "providers": [{"name": "gmail", "requireTLS": False, "dane": False}],
        "reports": {"enabled": True, "contact": "tls@example.com"},
    })})
    rendered = sender_config.render_config(sender_config.RenderInput(
        name="mail", namespace="ns", spec=spec, active_pods=1, domain_auths={}))
    tls = sc.parse_config(rendered.text).delivery.tls
    assert tls.settings_for("gmail", opportunistic=True) == sc.tls_policy.Settings(
        require_tls=False, min_version="TLSv1.3", dane=False, mta_sts=True)
    assert tls.settings_for("yahoo", opportunistic=True) == sc.tls_policy.Settings(
        require_tls=True, min_version="TLSv1.3", dane=True, mta_sts=True)
    assert tls.reports.enabled and tls.reports.contact == "tls@example.com"
    assert "requireTLS: true" in rendered.text


def test_tls_reports_come_from_the_pools_first_domain_once_per_scaled_day() -> None:
    spec = SPEC.model_copy(update={"transport_security": sp.TransportSecurity.model_validate(
        {"reports": {"enabled": True, "fromLocalPart": "tls-reports"}})})
    rendered = sender_config.render_config(sender_config.RenderInput(
        name="mail", namespace="ns", spec=spec, active_pods=1, day_length="2m",
        domain_auths={"example-com": domain("example-com", ready=True, active=True)}))
    config = sc.parse_config(rendered.text)
    assert config.delivery.tls.reports.from_address == "tls-reports@example.com.test"
    assert config.delivery.tls.reports.interval == "2m"
    assert config.report_class == "transactional"
    default = sender_config.render_config(sender_config.RenderInput(
        name="mail", namespace="ns", spec=SPEC, active_pods=1, domain_auths={}))
    assert sc.parse_config(default.text).delivery.tls.reports.interval == "24h"


def test_operator_settings_give_the_pods_their_trust_anchors_and_a_default_dane_resolver(
) -> None:
    """Environment, not policy: the CA bundle path, the policy hosts' port and the cluster's
    validating resolver come from operator settings; a resolver the spec names wins."""
    def render(spec: sp.SendingPoolSpec) -> sc.DeliveryTLS:
        return sc.parse_config(sender_config.render_config(sender_config.RenderInput(
            name="mail", namespace="ns", spec=spec, active_pods=1, domain_auths={},
            tls_ca_file="/etc/ca.pem", mta_sts_port=8443,
            dane_resolver=("10.0.0.53", 5353))).text).delivery.tls

    tls = render(SPEC)
    assert (tls.ca_file, tls.mta_sts_port) == ("/etc/ca.pem", 8443)
    assert tls.dane_resolver == sc.DaneResolver(address="10.0.0.53", port=5353)
    named = SPEC.model_copy(update={"transport_security": sp.TransportSecurity.model_validate(
        {"daneResolver": {"address": "10.0.0.10"}})})
    assert render(named).dane_resolver == sc.DaneResolver(address="10.0.0.10", port=53)
    bare = sc.parse_config(sender_config.render_config(sender_config.RenderInput(
        name="mail", namespace="ns", spec=SPEC, active_pods=1, domain_auths={})).text)
    assert (bare.delivery.tls.ca_file, bare.delivery.tls.dane_resolver) == (None, None)
    assert bare.delivery.tls.mta_sts_port == 443


def test_transport_security_refuses_a_provider_named_twice() -> None:
    with pytest.raises(ValueError, match="provider name"):
        sp.TransportSecurity.model_validate(
            {"providers": [{"name": "gmail"}, {"name": "gmail", "requireTLS": True}]})
