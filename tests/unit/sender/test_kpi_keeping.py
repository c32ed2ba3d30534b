"""The KPIs as a sender keeps them: saved in the spool across restarts (and through a commit
fault), exported to Prometheus with label sets that stay bounded whatever tags arrive."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from mailfleet_sender import clock, config, kpi_keeping, metrics, spool
from prometheus_client.parser import text_string_to_metric_families
from sandbox_fixtures.waiting import eventually as _until
from unit.sender.kpi_events import T0, Wall, campaign_of_ten, event


def _keeper(directory: Path, wall: Wall, text: str = "") -> tuple[kpi_keeping.KpiKeeper,
                                                                  spool.Spool]:
    store = spool.Spool.open(directory)
    store.start()
    cfg = config.parse_config("pool: news\n" + text)
    return kpi_keeping.KpiKeeper(cfg=cfg, spool_=store, clock_=clock.Clock(wall=wall)), store


async def test_the_kpis_survive_a_restart_of_the_sender(tmp_path: Path) -> None:
    wall = Wall()
    keeper, store = _keeper(tmp_path, wall)
    keeper.load()
    campaign_of_ten(keeper.book, T0)
    before = keeper.stats()
    await keeper.stop()
    store.close()

    keeper, store = _keeper(tmp_path, wall)
    keeper.load()
    assert keeper.stats() == before
    assert before.windows["1h"].total.sent == 10
    assert before.windows["1h"].by["tag:campaign"]["spring"].open_rate == pytest.approx(2 / 7,
                                                                                       rel=1e-5)
    keeper.observe(event("accepted", T0, "m10"))  # and counting carries on from there
    assert keeper.stats().days["2026-12-05"].total.sent == 11
    store.close()


async def test_the_keeper_saves_every_interval_and_only_what_changed(tmp_path: Path) -> None:
    wall = Wall()
    keeper, store = _keeper(tmp_path, wall, "kpis: {saveInterval: 20ms}\n")
    keeper.start()
    assert store.load_kpis() is None  # nothing counted: nothing written
    keeper.observe(event("accepted", T0))
    await _until(lambda: store.load_kpis() is not None, "the periodic save")
    commits = store.commits
    await keeper.save()
    await store.flush()
    assert store.commits == commits + 1  # the flush's own commit only: no second copy
    await keeper.stop()
    store.close()


async def test_an_unreadable_saved_state_starts_from_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wall = Wall()
    keeper, store = _keeper(tmp_path, wall)
    keeper.observe(event("accepted", T0))
    await keeper.stop()
    store.close()
    with sqlite3.connect(tmp_path / spool.SPOOL_FILE) as db:
        db.execute("UPDATE kpis SET value = ?", (b'{"v": 1, "resolutions": [',))
    keeper, store = _keeper(tmp_path, wall)
    keeper.load()
    assert keeper.stats().windows["1h"].total.sent == 0
    assert "saved KPIs unreadable" in caplog.text
    store.close()


class ReadOnlyVolume(spool.Spool):
    read_only = False

    def _connect(self) -> sqlite3.Connection:
        db = super()._connect()
        if self.read_only:
            db.execute("PRAGMA query_only = ON")
        return db


async def test_saves_during_a_commit_fault_hold_one_marker_and_the_newest_state_lands(
    tmp_path: Path,
) -> None:
    spool.Spool.open(tmp_path).close()
    store = ReadOnlyVolume(tmp_path / spool.SPOOL_FILE)
    store.read_only = True
    store.start()
    for n in range(5):
        store.save_kpis(b'{"n": %d}' % n)
        with pytest.raises(spool.SpoolError):
            await store.flush()
    assert store.unrecorded == 1
    store.read_only = False
    await _until(lambda: store.unrecorded == 0, "the retried save to commit")
    store.close()
    assert spool.Spool.open(tmp_path).load_kpis() == b'{"n": 4}'


def test_prometheus_label_sets_stay_bounded_under_ten_thousand_campaigns(tmp_path: Path) -> None:
    wall = Wall()
    keeper, store = _keeper(tmp_path, wall, "events: {tagMetricsAllow: [campaign]}\n")
    store.close()
    for i in range(10_000):
        keeper.observe(event("accepted", T0, f"m{i}", tags={"campaign": f"c{i}",
                                                          "segment": f"s{i}"}))
        keeper.observe(event("delivered", T0, f"m{i}", delay_s=2.0,
                             tags={"campaign": f"c{i}", "segment": f"s{i}"}))
    registry = metrics.Metrics()
    registry.attach(keeper.collect)
    families = {f.name: f for f in text_string_to_metric_families(registry.render().decode())}
    tag = families["mailfleet_sender_kpi_tag"]
    values = {s.labels["value"] for s in tag.samples}
    assert len(values) == 101 and "_other" in values
    assert {s.labels["tag"] for s in tag.samples} == {"campaign"}  # segment never a label
    assert {s.labels["pool"] for s in tag.samples} == {"news"}
    kpi_series = sum(len(f.samples) for name, f in families.items() if "_kpi_" in name)
    assert kpi_series < 5000
    delivered = {s.labels["value"]: s.value for s in tag.samples
                 if s.labels["figure"] == "delivered"}
    assert delivered["_other"] == 9900 and sum(delivered.values()) == 10_000
    histogram = families["mailfleet_sender_kpi_pool_deliver_seconds"]
    count = next(s for s in histogram.samples if s.name.endswith("_count"))
    assert count.value == 10_000
    le_2_5 = next(s for s in histogram.samples if s.labels.get("le") == "2.5")
    assert le_2_5.value == 10_000
    exposed = {s.name for f in families.values() for s in f.samples if "_kpi_" in s.name}
    assert exposed <= set(metrics.KPI_METRICS)
