"""Progress lines: what a long command says on stderr while it works, and that library callers hear nothing."""

from __future__ import annotations

import io
from types import SimpleNamespace

from infra.progress import Progress, quiet


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stage_lines_carry_the_seconds_since_the_start_and_nest():
    stream, clock = io.StringIO(), Clock()
    say = Progress(stream, "backtest: ", clock=clock)
    clock.now += 12.4
    say("cutoff 1 of 3 (2026-03-31): 41,200 customers to score")
    clock.now += 30
    say.under("cutoff 1 of 3 (2026-03-31): ").under("training: ")("kept 412 trees")
    assert stream.getvalue().splitlines() == [
        "backtest: cutoff 1 of 3 (2026-03-31): 41,200 customers to score, 12 s",
        "backtest: cutoff 1 of 3 (2026-03-31): training: kept 412 trees, 42 s",
    ]


def test_tree_lines_come_every_hundred_trees_once_a_few_seconds_have_passed():
    stream, clock = io.StringIO(), Clock()
    callback = Progress(stream, "training: ", clock=clock).trees("fitting", 1500)
    for i in range(1000):
        clock.now += 0.02 if i < 400 else 0.1  # 8 s for the first 400 trees, then 10 s a hundred
        callback(SimpleNamespace(iteration=i))
    assert stream.getvalue().splitlines() == [
        "training: fitting: 300 trees of at most 1,500, 6 s",  # not at 100 or 200: a quick fit says nothing
        "training: fitting: 500 trees of at most 1,500, 18 s",
        "training: fitting: 600 trees of at most 1,500, 28 s",
        "training: fitting: 700 trees of at most 1,500, 38 s",
        "training: fitting: 800 trees of at most 1,500, 48 s",
        "training: fitting: 900 trees of at most 1,500, 58 s",
        "training: fitting: 1,000 trees of at most 1,500, 68 s",
    ]


def test_no_stream_no_lines(capsys):
    say = quiet(None)
    say("examples at 2026-03-31")
    say.trees("fitting", 10, every=1, seconds=0)(SimpleNamespace(iteration=0))
    assert capsys.readouterr() == ("", "")
