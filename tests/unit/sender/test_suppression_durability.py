"""Suppressions are written with `synchronous=FULL`: an unsubscribe the pod acknowledged
(RFC 8058 receivers do not ask twice) or a hard bounce it recorded must survive a power loss,
not only a crash of the process. With WAL and `synchronous=NORMAL` (the earlier setting) the
last commits before a power cut can be lost, and the address would be mailed again."""

from __future__ import annotations

from pathlib import Path

from mailfleet_sender import suppression

FULL = 2  # SQLite's numbering: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


def test_the_suppression_database_fsyncs_every_commit(tmp_path: Path) -> None:
    path = tmp_path / "suppression.sqlite3"
    first = suppression.SuppressionList(path, node_id="pod-0")
    try:
        assert first.synchronous == FULL
        first.record("someone@example.com", suppression.Reason.UNSUBSCRIBE, "pod-0:one-click")
    finally:
        first.close()
    # The pragma is per connection: a reopened file (a restarted pod) is FULL again.
    again = suppression.SuppressionList(path, node_id="pod-0")
    try:
        assert again.synchronous == FULL
        assert again.is_suppressed("someone@example.com")
    finally:
        again.close()
