"""A Kubernetes API emulator for the sandbox (DESIGN.md §5): kubectl, the `kubernetes`
Python client and kopf talk to it over HTTP as they would to kube-apiserver.

See docs/sandbox.md for what it does and does not do.
"""

from mailfleet_sandbox.kube.api import ApiServer
from mailfleet_sandbox.kube.errors import ApiError

__all__ = ["ApiError", "ApiServer"]
