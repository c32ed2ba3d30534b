"""Events as the event contract writes them (docs/events.md), for the KPI tests."""

from __future__ import annotations

import datetime
from typing import Any

from mailfleet_sender import kpis

T0 = datetime.datetime(2026, 12, 5, 10, 2, tzinfo=datetime.UTC).timestamp()
HARD = {"kind": "hard", "code": "5.1.1", "reason": "unknown user"}
SOFT = {"kind": "soft", "code": "5.2.2", "reason": "mailbox full"}


class Wall:
    def __init__(self, at: float = T0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at

    def moment(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.at, datetime.UTC)


def event(kind: str, at: float, message: str = "m1", recipient: str = "a@gmail.test",
          **fields: Any) -> dict[str, Any]:
    stamp = datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="milliseconds")
    base: dict[str, Any] = {
        "schema": "mailfleet.io/event/v1", "id": f"{kind}-{message}-{recipient}-{at}",
        "type": kind, "time": stamp.replace("+00:00", "Z"), "message_id": message,
        "recipient": recipient, "pool": "news", "namespace": "mail", "class": "bulk",
        "ip": "192.0.2.10", "provider": "gmail", "tags": {"campaign": "spring", "segment": "vip"},
        "reply": None, "bounce": None, "url": None, "machine": None, "delay_s": None,
        "attempt": None,
    }
    base.update(fields)
    return base



def campaign_of_ten(book: kpis.KpiBook, at: float) -> None:
    """10 accepted; 7 delivered (1..7 s), 1 hard and 1 soft bounce, 1 still queued; 1
    complaint, 1 unsubscribe; opens: m0 three times by its reader, m1 by a proxy then its
    reader, m2 by a proxy only; one click on m0 twice."""
    for i in range(10):
        book.observe(event("accepted", at, f"m{i}"))
    for i in range(7):
        book.observe(event("delivered", at, f"m{i}", delay_s=float(i + 1)))
    book.observe(event("bounced", at, "m7", bounce=HARD))
    book.observe(event("bounced", at, "m8", bounce=SOFT))
    book.observe(event("complained", at, "m3"))
    book.observe(event("unsubscribed", at, "m4"))
    for _ in range(3):
        book.observe(event("opened", at, "m0", machine=False))
    book.observe(event("opened", at, "m1", machine=True))
    book.observe(event("opened", at, "m1", machine=False))
    book.observe(event("opened", at, "m2", machine=True))
    for _ in range(2):
        book.observe(event("clicked", at, "m0", machine=False, url="https://shop.test/a"))
