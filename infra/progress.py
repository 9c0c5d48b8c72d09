"""How far along a long command is: one line per stage on stderr, with counts and the time since it began.

    training: examples at cutoff 2 of 5 (2026-06-10): 41,200 buyers (57% churned), 12 s
    training: fitting: 300 trees of at most 1,500, 31 s

`Progress(sys.stderr)` is what a command passes down; plain functions take `progress=None` and say
nothing then, so library callers and tests stay quiet. Only stderr: a command's stdout (a table, or
`--format json`) is exactly what it was. Plain lines rather than a bar: they read the same in a
terminal, a CI log and a Prefect worker's log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO


class Progress:
    """Stage lines (`progress("building examples")`) under a prefix, timed from when the first one was made."""

    def __init__(self, stream: TextIO | None, prefix: str = "", *, started: float | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.stream, self.prefix, self.clock = stream, prefix, clock
        self.started = clock() if started is None else started

    def __call__(self, text: str) -> None:
        if self.stream is None:
            return
        print(f"{self.prefix}{text}, {self.clock() - self.started:.0f} s", file=self.stream, flush=True)

    def under(self, prefix: str) -> Progress:
        """The same clock and stream, its lines after `prefix` (a stage inside a stage)."""
        return Progress(self.stream, self.prefix + prefix, started=self.started, clock=self.clock)

    def trees(self, what: str, most: int, every: int = 100, seconds: float = 5.0) -> Callable[[Any], None]:
        """A LightGBM callback: "fitting: 300 trees of at most 1,500" every `every` trees, once `seconds`
        have passed since the last line (a fit of a few seconds says nothing more than that it began)."""
        last = [self.clock()]

        def callback(env: Any) -> None:
            done = env.iteration + 1
            if self.stream is not None and done % every == 0 and self.clock() - last[0] >= seconds:
                last[0] = self.clock()
                self(f"{what}: {done:,} trees of at most {most:,}")

        return callback


def quiet(progress: Progress | None) -> Progress:
    """`progress`, or one that prints nothing."""
    return progress if progress is not None else Progress(None)
