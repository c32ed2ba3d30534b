"""API models: the one source of truth for the CRDs (pure, no I/O).

    from mailfleet_operator.api import common, domainauth, ipwarmup, sendingpool
    spec = sendingpool.SendingPoolSpec.model_validate(body["spec"])   # camelCase in
    patch = {"status": common.dump_status(status)}                     # camelCase out

`kinds.KINDS` lists the kinds with their names and printer columns; `crds` renders the
CustomResourceDefinitions and `reference` the Markdown API reference from the same models.
"""

from mailfleet_operator.api import common, domainauth, ipwarmup, kinds, providers, sendingpool
from mailfleet_operator.api.common import API_VERSION, GROUP, VERSION, Condition, dump_status
from mailfleet_operator.api.domainauth import DomainAuth, DomainAuthSpec, DomainAuthStatus
from mailfleet_operator.api.ipwarmup import IPWarmup, IPWarmupSpec, IPWarmupStatus
from mailfleet_operator.api.kinds import BY_KIND, BY_PLURAL, KINDS, KindInfo
from mailfleet_operator.api.sendingpool import SendingPool, SendingPoolSpec, SendingPoolStatus

__all__ = [
    "API_VERSION",
    "BY_KIND",
    "BY_PLURAL",
    "GROUP",
    "KINDS",
    "VERSION",
    "Condition",
    "DomainAuth",
    "DomainAuthSpec",
    "DomainAuthStatus",
    "IPWarmup",
    "IPWarmupSpec",
    "IPWarmupStatus",
    "KindInfo",
    "SendingPool",
    "SendingPoolSpec",
    "SendingPoolStatus",
    "common",
    "domainauth",
    "dump_status",
    "ipwarmup",
    "kinds",
    "providers",
    "sendingpool",
]
