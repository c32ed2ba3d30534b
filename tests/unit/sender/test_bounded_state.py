"""State keyed by what strangers choose (recipients' domains, their MX sites) is bounded
(issue 16): the MX cache and the reactive shaping state keep at most a fixed number of
entries, forgetting first what is the same as no entry, then the least recently used."""

from __future__ import annotations

from mailfleet_sender import bounces, mx, shaping


class _FakeMX(mx.MXResolver):
    """Every domain resolves to itself, without DNS."""

    async def _lookup(self, domain: str) -> tuple[mx.Route, float]:
        host = mx.MXHost(name=f"mx.{domain}", preference=10, addresses=("127.0.0.1",))
        return mx.Route(domain=domain, site=host.name, hosts=(host,)), 300.0


async def test_the_mx_cache_keeps_at_most_its_cap_and_the_recently_used() -> None:
    now = [0.0]
    resolver = _FakeMX(None, clock=lambda: now[0], max_entries=100)  # type: ignore[arg-type]
    await resolver.resolve("kept.test")
    for i in range(5000):
        await resolver.resolve(f"d{i}.test")
        if i % 50 == 0:
            assert resolver.cached("kept.test") is not None  # used often: never evicted
    assert len(resolver) <= 100
    assert resolver.cached("kept.test") is not None
    assert resolver.cached("d0.test") is None
    lookups = resolver.lookups
    await resolver.resolve("d4999.test")
    assert resolver.lookups == lookups  # still cached


def test_the_default_mx_cache_is_bounded() -> None:
    assert _FakeMX(None).max_entries == mx.MAX_CACHED_DOMAINS  # type: ignore[arg-type]


def test_shaping_state_for_unknown_sites_is_bounded_and_keeps_slowed_ones() -> None:
    shaper = shaping.Shaper(max_tracked=50)
    throttled = bounces.Classification(
        category=bounces.Category.THROTTLED, code=421, enhanced="4.7.0", reason="rate"
    )
    for t in range(3):
        shaper.observe("slow.example", throttled, float(t))
    assert shaper.rate_factor("slow.example", 3.0) < 1.0
    for i in range(10_000):
        assert shaper.rate_factor(f"mx.site{i}.test", 4.0) == 1.0
    assert len(shaper.providers()) <= 50
    assert "slow.example" in shaper.providers()  # slowed down: not the same as no state
    assert shaper.rate_factor("slow.example", 4.0) < 1.0
