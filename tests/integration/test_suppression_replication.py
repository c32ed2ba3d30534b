"""The pool-wide suppression list: several sender nodes on loopback, each with its own SQLite
file and HTTP API, replicating to each other (in one process for this phase)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from mailfleet_sender import suppression
from sandbox_fixtures import waiting

TOKEN = "pool-secret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEADLINE = 3.0


async def eventually(check: Callable[[], bool], what: str, deadline: float = DEADLINE) -> float:
    """The shared wait with this file's bound: the push must beat a minute's pull interval."""
    return await waiting.eventually(check, what, deadline, interval=0.02)


@dataclasses.dataclass
class Node:
    name: str
    host: str
    db: pathlib.Path
    lst: suppression.SuppressionList
    runner: web.AppRunner
    replicator: suppression.Replicator
    url: str

    async def stop(self) -> None:
        await self.replicator.stop()
        await self.runner.cleanup()
        self.lst.close()


class Cluster:
    """Nodes that find each other through a shared peer list (the headless Service's stand-in)."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.nodes: dict[str, Node] = {}
        self.partitioned: set[str] = set()
        self.clocks: dict[str, float | None] = {}
        # Addresses still listed for pods that are gone (DNS lags behind reality).
        self.ghosts: list[str] = []

    def peers_for(self, name: str) -> suppression.PeersProvider:
        async def peers() -> list[str]:
            if name in self.partitioned:
                return []
            live = [n.url for n in self.nodes.values() if n.name not in self.partitioned]
            return live + self.ghosts

        return peers

    def clock_for(self, name: str) -> Callable[[], float]:
        def clock() -> float:
            fixed = self.clocks.get(name)
            return time.time() if fixed is None else fixed

        return clock

    async def start(self, name: str, host: str, *, pull_interval: float = 0.2) -> Node:
        db = self.tmp / f"{name}.sqlite"
        lst = suppression.SuppressionList(db, node_id=name, clock=self.clock_for(name))
        app = web.Application()
        app.add_routes(suppression.suppression_routes(
            lst, suppression.bearer_authorizer(TOKEN), max_import_entries=100,
            max_import_bytes=20_000,
        ))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, host, 0)
        await site.start()
        port = runner.addresses[0][1]
        url = f"http://{host}:{port}"
        replicator = suppression.Replicator(
            lst, self.peers_for(name), token=TOKEN, pull_interval=pull_interval,
            retry_delay=0.05, timeout=1.0,
        )
        node = Node(name, host, db, lst, runner, replicator, url)
        self.nodes[name] = node
        await replicator.start()
        return node

    async def stop(self, name: str) -> None:
        await self.nodes.pop(name).stop()

    async def close(self) -> None:
        for name in list(self.nodes):
            await self.stop(name)


@pytest.fixture
async def cluster(tmp_path: pathlib.Path) -> AsyncIterator[Cluster]:
    world = Cluster(tmp_path)
    yield world
    await world.close()



async def three(cluster: Cluster, *, pull_interval: float = 0.2) -> list[Node]:
    return [
        await cluster.start(name, f"127.0.0.{i + 2}", pull_interval=pull_interval)
        for i, name in enumerate(("pod-0", "pod-1", "pod-2"))
    ]


async def test_a_hard_bounce_at_one_pod_stops_the_others_by_push(cluster: Cluster) -> None:
    # A pull interval of a minute: only the immediate push can meet the bound.
    a, b, c = await three(cluster, pull_interval=60.0)
    await a.lst.add("Jane.Doe@Example.ORG", suppression.Reason.HARD_BOUNCE, "pod-0:dsn")
    # Half the pull interval: only the push can meet it, and a loaded machine still does.
    await eventually(
        lambda: b.lst.is_suppressed("jane.doe@example.org")
        and c.lst.is_suppressed("JANE.DOE@example.org"),
        "the entry reaches every pod",
        deadline=30.0,
    )
    entry = c.lst.get("jane.doe@example.org")
    assert entry is not None
    assert (entry.address, entry.reason, entry.origin) == (
        "Jane.Doe@example.org", "hard_bounce", "pod-0"
    )
    assert a.replicator.metrics.pushes == 2  # itself excluded


async def test_removal_through_any_pods_api_resumes_delivery_everywhere(cluster: Cluster) -> None:
    a, b, c = await three(cluster, pull_interval=60.0)
    await a.lst.add("jane@example.org", suppression.Reason.COMPLAINT, "pod-0:arf")
    await eventually(lambda: c.lst.is_suppressed("jane@example.org"), "added everywhere")
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.delete(f"{c.url}/v1/suppressions/jane@example.org") as response:
            assert response.status == 200
            assert (await response.json())["suppressed"] is False
    await eventually(
        lambda: not a.lst.is_suppressed("jane@example.org")
        and not b.lst.is_suppressed("jane@example.org"),
        "removal reaches every pod",
    )
    assert a.lst.last_removed_at("jane@example.org") is not None


async def test_a_restarted_pod_catches_up_from_its_file_and_its_peers(cluster: Cluster) -> None:
    a, b, _ = await three(cluster)
    await a.lst.add("before@example.org", suppression.Reason.HARD_BOUNCE, "pod-0")
    await eventually(lambda: cluster.nodes["pod-2"].lst.is_suppressed("before@example.org"),
                     "first entry replicated")
    cluster.ghosts.append(cluster.nodes["pod-2"].url)
    await cluster.stop("pod-2")
    await a.lst.add("while-down@example.org", suppression.Reason.UNSUBSCRIBE, "pod-0")
    await b.lst.remove("before@example.org")
    await eventually(lambda: a.replicator.metrics.push_failures >= 1,
                     "the push to the stopped pod failed")
    cluster.ghosts.clear()
    restarted = await cluster.start("pod-2", "127.0.0.4")
    await eventually(
        lambda: restarted.lst.is_suppressed("while-down@example.org")
        and not restarted.lst.is_suppressed("before@example.org"),
        "the restarted pod caught up by pulling",
    )


async def test_a_new_pod_bootstraps_the_whole_list_from_its_peers(cluster: Cluster) -> None:
    a, _, _ = await three(cluster)
    added = await a.lst.add_many(
        [(f"user{i}@example.org", "import") for i in range(2500)], source="import"
    )
    assert added == 2500
    fresh = await cluster.start("pod-3", "127.0.0.5")
    await eventually(lambda: len(fresh.lst) == 2500, "the new pod has every entry", 5.0)


async def test_conflicting_add_and_remove_resolve_by_timestamp_everywhere(
    cluster: Cluster,
) -> None:
    a, b, c = await three(cluster, pull_interval=0.1)
    cluster.clocks.update({"pod-0": 1000.0, "pod-1": 1000.0, "pod-2": 1000.0})
    for address in ("late-remove@example.org", "late-add@example.org"):
        await a.lst.add(address, "manual", "test")
        await eventually(lambda a=address: c.lst.is_suppressed(a), "initial add everywhere")  # type: ignore[misc]
    cluster.partitioned = {"pod-0", "pod-1", "pod-2"}
    # Partitioned: pod-0 removes one address at t=1030, pod-1 re-adds it at t=1025 after a
    # removal at t=1020; the other address the other way round. (Clocks within the 5 minutes
    # of skew a peer's timestamp may have; later ones are refused.)
    cluster.clocks.update({"pod-0": 1030.0, "pod-1": 1020.0})
    await a.lst.remove("late-remove@example.org")
    await b.lst.remove("late-remove@example.org")
    await a.lst.remove("late-add@example.org")
    await b.lst.remove("late-add@example.org")
    cluster.clocks["pod-1"] = 1025.0
    await b.lst.add("late-remove@example.org", "manual", "test")
    cluster.clocks["pod-1"] = 1040.0
    await b.lst.add("late-add@example.org", "manual", "test")
    assert a.lst.is_suppressed("late-add@example.org") is False
    cluster.partitioned = set()
    await eventually(
        lambda: all(
            not n.lst.is_suppressed("late-remove@example.org")
            and n.lst.is_suppressed("late-add@example.org")
            for n in (a, b, c)
        ),
        "every pod converged on the later write",
    )


async def test_the_http_api_reads_adds_and_removes(cluster: Cluster) -> None:
    a, b, _ = await three(cluster, pull_interval=60.0)
    async with aiohttp.ClientSession(headers=AUTH) as http:
        put = await http.put(f"{a.url}/v1/suppressions/Bob@Example.com",
                             json={"reason": "manual", "source": "support-ticket-42"})
        assert put.status == 201
        await eventually(lambda: b.lst.is_suppressed("bob@example.com"), "replicated")
        again = await http.put(f"{b.url}/v1/suppressions/bob@example.com")
        assert again.status == 200
        shown = await (await http.get(f"{b.url}/v1/suppressions/BOB@example.com")).json()
        assert (shown["address"], shown["source"]) == ("Bob@example.com", "support-ticket-42")
        listing = await (await http.get(f"{b.url}/v1/suppressions")).json()
        assert listing["count"] == 1 and listing["entries"][0]["address"] == "Bob@example.com"
        missing = await http.get(f"{a.url}/v1/suppressions/nobody@example.com")
        assert missing.status == 404
        assert (await http.delete(f"{a.url}/v1/suppressions/nobody@example.com")).status == 404
        bad = await http.put(f"{a.url}/v1/suppressions/not-an-address")
        assert bad.status == 400 and (await bad.json())["error"] == "invalid_address"


async def test_requests_without_the_pool_token_change_nothing(cluster: Cluster) -> None:
    (a,) = [await cluster.start("pod-0", "127.0.0.2")]
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer wrong"}) as http:
        for method, path, body in (
            ("PUT", "/v1/suppressions/x@example.org", None),
            ("POST", "/v1/suppressions", {"entries": ["x@example.org"]}),
            ("POST", "/v1/suppressions/_replicate", {"entries": []}),
            ("GET", "/v1/suppressions", None),
        ):
            async with http.request(method, a.url + path, json=body) as response:
                assert response.status == 401, path
    assert len(a.lst) == 0
    assert a.lst.metrics.unauthorized == 4


async def test_bulk_import_is_all_or_nothing_and_bounded(cluster: Cluster) -> None:
    (a,) = [await cluster.start("pod-0", "127.0.0.2")]
    async with aiohttp.ClientSession(headers=AUTH) as http:
        ok = await http.post(f"{a.url}/v1/suppressions", json={"entries": [
            "one@example.org", {"address": "two@example.org", "reason": "legacy-esp"},
        ]})
        assert (ok.status, await ok.json()) == (200, {"received": 2, "added": 2})
        mixed = await http.post(f"{a.url}/v1/suppressions", json={"entries": [
            "three@example.org", "broken@", {"address": 42}, "four@example.org",
        ]})
        assert mixed.status == 400
        errors = (await mixed.json())["errors"]
        assert [e["index"] for e in errors] == [1, 2]
        too_many = await http.post(f"{a.url}/v1/suppressions", json={
            "entries": [f"u{i}@example.org" for i in range(101)]})
        assert too_many.status == 413
        too_big = await http.post(f"{a.url}/v1/suppressions",
                                  data=json.dumps({"entries": ["x" * 30_000]}))
        assert too_big.status == 413
        chunked = await http.post(f"{a.url}/v1/suppressions",
                                  data=_chunks(b'{"entries": ["' + b"y" * 30_000 + b'"]}'))
        assert chunked.status == 413
        not_json = await http.post(f"{a.url}/v1/suppressions", data=b"one@example.org\n")
        assert not_json.status == 400
    assert sorted(e.address for e in a.lst.active()) == ["one@example.org", "two@example.org"]
    assert a.lst.get("two@example.org").reason == "legacy-esp"  # type: ignore[union-attr]
    assert a.lst.metrics.import_rejected == 5


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 4096):
        yield data[start:start + 4096]


async def test_bad_replication_payloads_are_refused_and_counted(cluster: Cluster) -> None:
    (a,) = [await cluster.start("pod-0", "127.0.0.2")]
    good = suppression.Entry("x@example.org", True, "hard_bounce", "pod-9", 5, "pod-9").to_json()
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for body in (
            {"entries": [good, {**good, "address": "nope"}]},
            {"entries": [{**good, "ts": -1}]},
            {"entries": [{**good, "suppressed": "yes"}]},
            {"entries": "x"},
            [1, 2],
        ):
            async with http.post(f"{a.url}/v1/suppressions/_replicate", json=body) as response:
                assert response.status == 400
    assert len(a.lst) == 0
    assert a.lst.metrics.merge_rejected == 5


# ----------------------------------------------------------------- the list alone


def _memory_list(name: str = "n") -> suppression.SuppressionList:
    return suppression.SuppressionList(":memory:", node_id=name)


@pytest.mark.parametrize(
    ("raw", "display"),
    [
        ("Jane@Example.ORG", "Jane@example.org"),
        ("<jane@example.org>", "jane@example.org"),
        ("  jane+news@sub.example.co.uk ", "jane+news@sub.example.co.uk"),
        ("jane@bücher.example", "jane@xn--bcher-kva.example"),
    ],
    ids=[
        "the domain is lowercased and the local part kept",
        "angle brackets are stripped",
        "surrounding spaces are stripped and plus tags kept",
        "an internationalised domain is stored as its A-label",
    ],
)
def test_addresses_are_normalised(raw: str, display: str) -> None:
    assert suppression.normalize_address(raw) == (display, display.lower())


@pytest.mark.parametrize(
    "raw",
    ["", "plain", "@example.org", "jane@", "jane@localhost", "ja ne@example.org",
     "jane@exa_mple.org", "a" * 65 + "@example.org", "jane@" + "a" * 250 + ".org"],
    ids=["empty", "no at sign", "no local part", "no domain", "single label domain",
         "space in the local part", "underscore in the domain", "local part over 64",
         "address over 254"],
)
def test_invalid_addresses_are_refused(raw: str) -> None:
    with pytest.raises(suppression.InvalidAddress):
        suppression.normalize_address(raw)


async def test_add_is_idempotent_and_the_check_is_case_insensitive() -> None:
    lst = _memory_list()
    first = await lst.add("Jane@example.org", "hard_bounce", "dsn")
    second = await lst.add("jane@EXAMPLE.org", "complaint", "arf")
    assert first == second
    assert lst.is_suppressed("JANE@example.org")
    assert not lst.is_suppressed("not an address")
    assert await lst.remove("nobody@example.org") is None


async def test_the_list_survives_a_restart_from_its_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s.sqlite"
    lst = suppression.SuppressionList(path, node_id="pod-0")
    await lst.add("a@example.org", "hard_bounce", "dsn")
    await lst.add("b@example.org", "hard_bounce", "dsn")
    await lst.remove("b@example.org")
    epoch, cursor = lst.epoch, lst.cursor
    lst.close()
    again = suppression.SuppressionList(path, node_id="pod-0")
    assert again.is_suppressed("a@example.org") and not again.is_suppressed("b@example.org")
    assert (again.epoch, again.cursor) == (epoch, cursor)
    # The clock never goes back: a new write is ordered after everything on file.
    entry = await again.add("c@example.org", "x", "y")
    assert entry.ts > max(e.ts for e in again.entries(0)[0] if e.address != "c@example.org")
    again.close()


_ENTRY = st.builds(
    suppression.Entry,
    address=st.sampled_from(["a@example.org", "A@example.org", "b@example.org"]),
    suppressed=st.booleans(),
    reason=st.just("r"),
    source=st.just("s"),
    ts=st.integers(min_value=1, max_value=5),
    origin=st.sampled_from(["pod-0", "pod-1"]),
)


@settings(max_examples=60, deadline=None)
@given(entries=st.lists(_ENTRY, max_size=8), seed=st.randoms(use_true_random=False))
def test_merging_is_order_independent_and_idempotent(
    entries: list[suppression.Entry], seed: object
) -> None:
    async def final_state(batches: list[list[suppression.Entry]]) -> list[suppression.Entry]:
        lst = _memory_list()
        for batch in batches:
            await lst.merge(batch)
        state = sorted(lst.entries(0)[0], key=lambda e: e.key)
        lst.close()
        return state

    shuffled = list(entries)
    seed.shuffle(shuffled)  # type: ignore[attr-defined]
    one_by_one = [[e] for e in itertools.chain(shuffled, entries)]
    assert asyncio.run(final_state([entries])) == asyncio.run(final_state(one_by_one))


async def test_local_changes_are_announced_and_merges_are_not() -> None:
    lst = _memory_list()
    seen: list[str] = []
    lst.add_listener(lambda batch: seen.extend(e.address for e in batch))
    await lst.add("a@example.org", "r", "s")
    ahead = int(time.time() * 1_000_000) + 60_000_000  # a peer's clock a minute ahead
    await lst.merge([suppression.Entry("b@example.org", True, "r", "s", ahead, "pod-9")])
    await lst.remove("a@example.org")
    assert seen == ["a@example.org", "a@example.org"]
    # Seeing a peer's timestamp moves our clock past it.
    later = await lst.add("c@example.org", "r", "s")
    assert later.ts > ahead


AsyncCheck = Callable[[], Awaitable[bool]]
