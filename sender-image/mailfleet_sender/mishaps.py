"""What an exception inside one delivery attempt means for that delivery (no I/O).

Why: an exception escaping an attempt (a bug, config that slipped past validation, a message
that cannot be read) used to end the lane's worker, and the delivery it had popped sat with no
timer until the pod restarted. Now every exception is the delivery's: it is turned into a
local reply here, and the engine retries it with the usual backoff (until the class's max age
expires it) or bounces it, and the worker goes on. A local failure never counts against the
recipient (no suppression), whatever the verdict.
"""

from __future__ import annotations

import dataclasses

from mailfleet_sender import hooks


class MessageMissing(RuntimeError):
    """The message's body is gone from the spool: no later attempt can send it."""


@dataclasses.dataclass(frozen=True)
class Mishap:
    reply: hooks.Reply
    permanent: bool
    """Bounce now (no attempt can succeed); otherwise retry with backoff."""


def classify(error: BaseException) -> Mishap:
    """The reply recorded for an attempt that raised `error`. The text names the exception
    type only: exception messages may quote config values."""
    if isinstance(error, MessageMissing):
        return Mishap(hooks.Reply(554, "local error: message data missing from the spool",
                                  "local", "5.3.0"), permanent=True)
    return Mishap(hooks.Reply(451, f"local error ({type(error).__name__}), will retry",
                              "local", "4.3.0"), permanent=False)
