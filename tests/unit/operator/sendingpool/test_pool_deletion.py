"""What a deleted pool does next (`logic.pool_deletion`): one table case per situation."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from mailfleet_operator.logic import pool_deletion
from mailfleet_operator.logic.pool_deletion import DeletionInput, Phase, PodQueue

T0 = datetime(2025, 1, 1, tzinfo=UTC)
ABANDON = {pool_deletion.DELETION_ANNOTATION: pool_deletion.ABANDON}


def given(*pods: PodQueue, after: float = 10, volumes: tuple[int, ...] | None = None,
          replicas: int | None = None, annotations: dict[str, str] | None = None,
          ) -> DeletionInput:
    return DeletionInput(
        started=T0,
        now=T0 + timedelta(seconds=after),
        drain_timeout=timedelta(minutes=1),
        annotations=annotations or {},
        pods=pods,
        volumes=tuple(range(len(pods))) if volumes is None else volumes,
        replicas=len(pods) if replicas is None else replicas,
    )


EMPTY = PodQueue("mail-0", draining=True, queued=0)

CASES = [
    pytest.param(given(EMPTY, PodQueue("mail-1", draining=True, queued=0)),
                 Phase.DRAINED, (), None, {},
                 id="every pod drained and empty: the pool and its volumes go"),
    pytest.param(given(EMPTY, PodQueue("mail-1", draining=False, queued=0)),
                 Phase.DRAINING, ("mail-1",), None, {"mail-1": 0},
                 id="an empty pod still taking mail is asked to drain first (mail may arrive)"),
    pytest.param(given(EMPTY, PodQueue("mail-1", draining=True, queued=4)),
                 Phase.DRAINING, (), None, {"mail-1": 4},
                 id="mail queued within the bound: keep draining"),
    pytest.param(given(EMPTY, PodQueue("mail-1")),
                 Phase.DRAINING, ("mail-1",), None, {"mail-1": None},
                 id="a pod that does not answer may hold mail: not drained"),
    pytest.param(given(EMPTY, volumes=(0, 2), replicas=1),
                 Phase.DRAINING, (), 3, {"volume 2 (no pod yet)": None},
                 id="a spool volume without a pod brings its pod back to drain it"),
    pytest.param(given(EMPTY, PodQueue("mail-1", draining=True, queued=4), after=61),
                 Phase.TIMED_OUT, (), None, {"mail-1": 4},
                 id="past drainTimeout with mail left: the pool stays and says so"),
    pytest.param(given(EMPTY, PodQueue("mail-1", draining=True, queued=0), after=3600),
                 Phase.DRAINED, (), None, {},
                 id="a queue that empties after the bound still lets the pool go"),
    pytest.param(given(EMPTY, PodQueue("mail-1", draining=True, queued=4),
                       annotations=ABANDON),
                 Phase.ABANDONED, (), None, {"mail-1": 4},
                 id="the abandon annotation lets it go at once, volumes kept"),
    pytest.param(given(), Phase.DRAINED, (), None, {},
                 id="a pool that never ran a pod has nothing to drain"),
]


@pytest.mark.parametrize(("situation", "phase", "drain", "replicas", "remaining"), CASES)
def test_decide_deletion(
    situation: DeletionInput,
    phase: Phase,
    drain: tuple[str, ...],
    replicas: int | None,
    remaining: dict[str, int | None],
) -> None:
    decision = pool_deletion.decide_deletion(situation)
    assert decision.phase is phase
    assert decision.drain == drain
    assert decision.replicas == replicas
    assert dict(decision.remaining) == remaining
    assert decision.finish == (phase in (Phase.DRAINED, Phase.ABANDONED))
    assert decision.delete_volumes == (phase is Phase.DRAINED)


def test_the_timed_out_condition_says_what_is_left_and_how_to_decide() -> None:
    decision = pool_deletion.decide_deletion(
        given(PodQueue("mail-0", draining=True, queued=5), PodQueue("mail-1"), after=120)
    )
    assert decision.message == (
        "draining before deletion (intake stopped, IPs kept); not drained within drainTimeout "
        "(1m00s): 5+ messages (mail-0: 5, mail-1: unknown). The pool stays, still draining, "
        "until its queues empty or the annotation mailfleet.io/deletion=abandon-queued-mail is "
        "set (the spool volumes are then kept), or spec.deletion.handoffTo names a pool that "
        "can take them"
    )


def handing(*pods: PodQueue, problem: str | None = None) -> DeletionInput:
    return dataclasses.replace(
        given(*pods), handoff=pool_deletion.HandoffTarget("other", problem=problem)
    )


def test_with_a_usable_handoff_target_every_pod_is_asked_to_hand_off_each_step() -> None:
    decision = pool_deletion.decide_deletion(
        handing(PodQueue("mail-0", draining=True, queued=3), PodQueue("mail-1"))
    )
    assert decision.handoff is True
    assert decision.drain == ("mail-0", "mail-1")  # a restarted pod hears the target again
    assert decision.message.startswith("handing the queues to pool other before deletion: 3+")


def test_a_handoff_target_that_cannot_take_mail_leaves_the_pods_delivering_themselves() -> None:
    decision = pool_deletion.decide_deletion(
        handing(PodQueue("mail-0", draining=True, queued=3), problem="it has no Ready pod")
    )
    assert decision.handoff is False
    assert decision.drain == ()
    assert decision.message.startswith(
        "cannot hand off to pool other (it has no Ready pod): delivering from this pool's IPs"
    )


def test_a_handed_off_queue_that_is_empty_lets_the_pool_go() -> None:
    decision = pool_deletion.decide_deletion(handing(EMPTY))
    assert decision.phase is Phase.DRAINED


def test_only_the_exact_annotation_value_abandons_mail() -> None:
    pods = (PodQueue("mail-0", draining=True, queued=1),)
    for value in ("true", "yes", "abandon"):
        decision = pool_deletion.decide_deletion(
            given(*pods, annotations={pool_deletion.DELETION_ANNOTATION: value})
        )
        assert decision.phase is Phase.DRAINING, value
