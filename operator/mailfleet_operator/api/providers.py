"""The built-in throttle table of large mailbox providers, and how spec entries override it.

Pure data (no I/O). Providers are recognised by the host names of a destination's MX records,
not by the recipient domain, so every domain hosted by Google Workspace or Microsoft 365 gets
the limits of its real receiver. Limits are pool-wide and deliberately conservative: they are
what a pool with established reputation can sustain without 421 deferrals; warming IPs are
held lower by their IPWarmup quota anyway. A `throttling.providers[]` entry with the same
name replaces a built-in entry wholesale.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from mailfleet_operator.api.sendingpool import ProviderThrottle, Throttling


def _provider(
    name: str,
    mx_patterns: Sequence[str],
    *,
    per_second: float,
    per_hour: int,
    connections: int,
) -> ProviderThrottle:
    return ProviderThrottle(
        name=name,
        mx_patterns=list(mx_patterns),
        messages_per_second=per_second,
        messages_per_hour=per_hour,
        max_connections=connections,
    )


BUILTIN_PROVIDERS: tuple[ProviderThrottle, ...] = (
    # Gmail and Google Workspace: aspmx.l.google.com, alt1.aspmx.l.google.com...
    _provider(
        "gmail",
        ["*.google.com", "*.googlemail.com"],
        per_second=20,
        per_hour=50000,
        connections=10,
    ),
    # Outlook.com/Hotmail and Microsoft 365: *.olc.protection.outlook.com, *.mail.protection...
    _provider(
        "outlook",
        ["*.protection.outlook.com", "*.outlook.com", "*.hotmail.com"],
        per_second=10,
        per_hour=20000,
        connections=8,
    ),
    # Yahoo and AOL share the same inbound: mta5.am0.yahoodns.net, mx-aol.mail.gm0.yahoodns.net.
    _provider("yahoo", ["*.yahoodns.net"], per_second=5, per_hour=10000, connections=5),
    # iCloud, me.com, mac.com: mx01.mail.icloud.com.
    _provider("apple", ["*.icloud.com"], per_second=5, per_hour=10000, connections=5),
    # Orange and Wanadoo: smtp-in.orange.fr. Known for strict per-IP connection limits.
    _provider("orange", ["*.orange.fr"], per_second=2, per_hour=3000, connections=2),
    # Free: mx1.free.fr, mx2.free.fr.
    _provider("free", ["*.free.fr"], per_second=2, per_hour=3000, connections=2),
    # SFR and neuf.fr: mx.sfr.fr, mx2.sfr.fr.
    _provider("sfr", ["*.sfr.fr"], per_second=2, per_hour=3000, connections=2),
    # La Poste: smtp-in.laposte.net.
    _provider("laposte", ["*.laposte.net"], per_second=2, per_hour=3000, connections=2),
    # GMX and Web.de (United Internet): mx00.emig.gmx.net, mx-ha03.web.de, mx00.gmx.com.
    _provider(
        "gmx",
        ["*.gmx.net", "*.gmx.com", "*.web.de"],
        per_second=5,
        per_hour=10000,
        connections=5,
    ),
)


def effective_providers(throttling: Throttling) -> list[ProviderThrottle]:
    """The provider table a pool uses: built-ins (unless disabled) overridden by spec entries.

    Spec entries keep their spec order and come first, so the first match in `match_provider`
    is the user's when patterns overlap.
    """
    own = list(throttling.providers)
    names = {p.name for p in own}
    builtin: Iterable[ProviderThrottle] = BUILTIN_PROVIDERS if throttling.builtin_providers else ()
    return own + [p for p in builtin if p.name not in names]


def mx_matches(pattern: str, mx_host: str) -> bool:
    """Whether an MX host name matches a pattern: "*.google.com" matches "aspmx.l.google.com".

    Case-insensitive; a trailing dot on the host is ignored. "*.google.com" does not match
    "google.com" itself (an MX is always a host below the provider's domain).
    """
    host = mx_host.lower().rstrip(".")
    return fnmatch.fnmatchcase(host, pattern.lower())


def match_provider(mx_host: str, providers: Iterable[ProviderThrottle]) -> ProviderThrottle | None:
    """The first provider whose patterns match the MX host, or None (defaults apply)."""
    for provider in providers:
        if any(mx_matches(pattern, mx_host) for pattern in provider.mx_patterns):
            return provider
    return None
