"""explain's times as a person reads them: to the minute, on the customer's clock, with UTC beside it."""

from __future__ import annotations

import datetime as dt

from flows.explain import _due_text, _utc_text


def test_a_deferred_touch_is_due_on_the_customers_clock_without_microseconds():
    due = dt.datetime(2026, 11, 1, 8, 0, 0, 123456)  # naive UTC, as the ledger keeps it
    assert _due_text(due, "Europe/Paris") == "2026-11-01 09:00 Europe/Paris (08:00 UTC)"
    assert _due_text(dt.datetime(2026, 10, 31, 20, 0, 5, 999), "Pacific/Auckland") == \
        "2026-11-01 09:00 Pacific/Auckland (20:00 UTC on 2026-10-31)"
    assert _due_text(due, "UTC") == _due_text(due, None) == "2026-11-01 08:00 UTC"
    assert _due_text(due, "Not/AZone") == "2026-11-01 08:00 UTC"  # judged as UTC, as the run judged it
    assert _due_text(None, "Europe/Paris") is None


def test_ledger_times_are_shown_to_the_second():
    assert _utc_text(dt.datetime(2026, 12, 8, 1, 33, 30, 129843)) == "2026-12-08 01:33:30"
    assert _utc_text("2026-12-08 01:33:30.129843") == "2026-12-08 01:33:30" and _utc_text(None) is None
