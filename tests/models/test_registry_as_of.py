"""A model's training as-of against a run's day: a past day scored by a model that learned from later data is said."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

from models.registry import trained_after


def test_a_model_trained_on_data_after_the_runs_day_is_named_with_what_to_do():
    model = SimpleNamespace(version="churn-20261108-h90-abc", as_of=dt.date(2026, 11, 8))
    text = trained_after(model, dt.date(2026, 11, 1))
    assert text.startswith("model churn-20261108-h90-abc learned from data up to 2026-11-08, after this run's day "
                           "2026-11-01: its scores for 2026-11-01 have seen what came later")
    assert "`lifecycle model train --as-of 2026-11-01`" in text
    assert trained_after(model, dt.date(2026, 11, 8)) is None  # the day it was trained for
    assert trained_after(model, dt.date(2026, 12, 8)) is None  # an older model scoring today: nothing to say
    assert trained_after(None, dt.date(2026, 11, 1)) is None  # model: none
