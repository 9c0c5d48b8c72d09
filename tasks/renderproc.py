"""The helper process that renders templates whose work their text does not bound (loops, macros, calls,
includes): a message that runs too long, or builds too much, fails alone, and the run goes on.

    parent (dispatch, any thread)                      child: python -m tasks.renderproc
    Renderer.render(source, rows) --pickle, chunks--> sets RLIMIT_AS on itself (start + RENDER_MEMORY_BYTES)
                                  <--JSON, streamed-- renders row by row; SIGALRM every 50 ms ends a
                                                      message past RENDER_SECONDS (RenderTimeout)

The parent waits at most RENDER_SECONDS + GRACE_SECONDS for the next results; a child that does not answer
(stuck in one C-level operation) is killed, the message it was on fails with `render_timeout`, and a new
child takes the rest. A child that dies (out of memory beyond the limit, a signal) is restarted the same
way. After TIMEOUT_STRIKES timeouts in one call the rest of its messages fail at once, so a template that
hangs on every message costs seconds, not hours. The child gets only the variables the template reads, as
plain values (numpy and pandas scalars converted), and answers in JSON, never pickle.

Lifecycle: `shared_renderer()` is this process's Renderer, started on first use and closed at exit
(`atexit`); a forked child process gets a fresh one. `with Renderer() as r:` gives one of your own.
A Renderer serves one call at a time (a lock): threads take turns. Not multiprocessing: a plain
subprocess, so it works inside Prefect's threads and in daemonic Dask workers alike.
"""

from __future__ import annotations

import atexit
import datetime as dt
import decimal
import json
import math
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infra.errors import DispatchError
from tasks import render, sandbox
from tasks.render import RenderFailure, partials_key
from tasks.sandbox import MAX_MESSAGE_CHARS, RENDER_MEMORY_BYTES, RENDER_SECONDS, TIMEOUT_STRIKES, RenderTimeout

GRACE_SECONDS = 2.0  # beyond RENDER_SECONDS before a silent child is taken for stuck (busy machines are slow)
START_SECONDS = 60.0  # for a new child to import Jinja and say it is ready
CHUNK_ROWS = 2_000  # rows per request
FLUSH_SECONDS = 0.05  # the child sends what it has at least this often while rendering
FLUSH_CHARS = 1 << 20  # ... or when this much text is waiting
_HEADER = struct.Struct(">I")
_ROOT = Path(__file__).resolve().parents[1]


class RendererUnavailable(DispatchError):
    """The helper process cannot be started at all (not a template's fault: the machine's)."""

    code = "L601"


def plain(value: Any) -> Any:
    """A row value as a plain Python value the child can unpickle without pandas or numpy."""
    if value is None or isinstance(value, (str, bool, int, float, decimal.Decimal, dt.date, dt.time, dt.timedelta)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if hasattr(value, "to_pydatetime"):  # pandas Timestamp
        return plain(value.to_pydatetime())
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalar
        return plain(value.item())
    if hasattr(value, "tolist"):  # numpy array
        return plain(value.tolist())
    return str(value)


def not_tried(name: str, seconds: float, strikes: int) -> str:
    return f"render_timeout: not tried, {name} ran over {seconds:g} s on {strikes} messages before"


class Renderer:
    """A helper process rendering templates under time and memory limits; thread-safe; restarted as needed."""

    def __init__(self, *, seconds: float = RENDER_SECONDS, memory_bytes: int = RENDER_MEMORY_BYTES) -> None:
        self.seconds, self.memory_bytes = seconds, memory_bytes
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._pid = os.getpid()
        self._buffer = b""
        self._ahead: Any = None  # the next request, made while the child renders the current one
        self.starts = 0  # children started: 1 + the stuck or dead ones replaced

    @property
    def pid(self) -> int | None:
        """The helper process's pid (None before the first render or after close)."""
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the helper process (it is started again by the next render)."""
        if self._pid != os.getpid():  # a forked copy: the helper belongs to the parent
            return
        with self._lock:
            self._stop(kill=False)

    # ---- the parent's side -----------------------------------------------------------------------

    def render(self, source: str, rows: list[Mapping], *, html: bool = False, name: str = "message",
               partials: Mapping[str, str] | None = None, max_chars: int = MAX_MESSAGE_CHARS,
               variables: frozenset[str] | None = None) -> list[str | RenderFailure]:
        """One entry per row, like tasks.render.render_rows (which calls this for non-straight templates)."""
        if variables is None:
            variables = frozenset(render.template_variables(source, partials))
        head = (source, html, partials_key(partials), max_chars, self.seconds, name)

        def request(start: int, strikes: int) -> tuple[int, int, bytes, int]:
            chunk = [{k: plain(row[k]) for k in variables if k in row} for row in rows[start:start + CHUNK_ROWS]]
            return start, strikes, pickle.dumps((*head, strikes, chunk), protocol=pickle.HIGHEST_PROTOCOL), len(chunk)

        out: list[str | RenderFailure] = []
        strikes, ahead = 0, None
        with self._lock:
            while len(out) < len(rows):
                if strikes >= TIMEOUT_STRIKES:
                    out += [RenderFailure(not_tried(name, self.seconds, strikes))] * (len(rows) - len(out))
                    break
                start = len(out)
                now = ahead if ahead and ahead[:2] == (start, strikes) else request(start, strikes)
                after = start + now[3]
                got = self._exchange(now[2], now[3], (lambda: request(after, strikes)) if after < len(rows) else None)
                ahead = self._ahead
                strikes += sum(isinstance(r, RenderFailure) and r.reason.startswith("render_timeout: over")
                               for r in got)
                out += got
        return out

    def _exchange(self, payload: bytes, n: int, prepare: Any) -> list[str | RenderFailure]:
        """Results for a prefix of the `n` rows in `payload` (all of them, unless the child was lost: then up
        to and including the message it was lost on, which fails). `prepare` makes the next request while
        the child renders this one (kept in self._ahead)."""
        self._ensure()
        self._ahead = None
        got: list[str | RenderFailure] = []
        try:
            self._send(payload)
            self._ahead = prepare() if prepare else None
            while len(got) < n:
                frame = self._receive(self.seconds + GRACE_SECONDS)
                if frame is None:
                    return got + [RenderFailure(f"render_timeout: over {self.seconds:g} s (the renderer was "
                                                "stopped and restarted)")]
                got += [RenderFailure(r[0]) if isinstance(r, list) else r for r in frame]
        except (BrokenPipeError, EOFError, OSError):
            self._stop(kill=True)
            return got + [RenderFailure("render_error: the renderer process ended (over its memory limit?)")]
        return got

    def _ensure(self) -> None:
        if self._pid != os.getpid():  # forked: the child process belongs to the parent
            self._proc, self._pid, self._buffer = None, os.getpid(), b""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._stop(kill=True)
        self.starts += 1
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tasks.renderproc", str(self.memory_bytes)], cwd=_ROOT,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise RendererUnavailable(f"the template renderer could not start: {exc}",
                                      hint="check that this Python can run `python -m tasks.renderproc`") from None
        try:
            ready = self._receive(START_SECONDS)
        except (EOFError, OSError):
            ready = None
        if ready != "ready":
            self._stop(kill=True)
            raise RendererUnavailable("the template renderer did not start",
                                      hint="run `python -m tasks.renderproc` to see why")

    def _stop(self, *, kill: bool) -> None:
        proc, self._proc, self._buffer = self._proc, None, b""
        if proc is None:
            return
        try:
            if kill:
                proc.kill()
            else:
                proc.stdin.close()
            proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass

    def _send(self, payload: bytes) -> None:
        data = memoryview(_HEADER.pack(len(payload)) + payload)
        fd = self._proc.stdin.fileno()
        while data:
            sent = os.write(fd, data[:1 << 20])
            data = data[sent:]

    def _receive(self, timeout: float) -> Any:
        """The next JSON frame; None when none came in `timeout` seconds (the child is then killed)."""
        deadline = time.monotonic() + timeout
        fd = self._proc.stdout.fileno()
        while True:
            if len(self._buffer) >= _HEADER.size:
                size = _HEADER.unpack_from(self._buffer)[0]
                if len(self._buffer) >= _HEADER.size + size:
                    body = self._buffer[_HEADER.size:_HEADER.size + size]
                    self._buffer = self._buffer[_HEADER.size + size:]
                    message = json.loads(body)
                    if isinstance(message, dict):  # the child met a bug of ours: keep its traceback
                        self._stop(kill=True)
                        raise RuntimeError(f"the template renderer failed:\n{message['bug']}")
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._stop(kill=True)
                return None
            data = os.read(fd, 1 << 20)
            if not data:
                raise EOFError
            self._buffer += data


_shared: Renderer | None = None
_shared_lock = threading.Lock()


def shared_renderer() -> Renderer:
    """This process's Renderer, started on first use, closed when the interpreter exits."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Renderer()
            atexit.register(_shared.close)
        return _shared


def _forget_after_fork() -> None:
    global _shared, _shared_lock
    _shared, _shared_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


# ---- the child's side ----------------------------------------------------------------------------

def _limit_memory(extra: int) -> None:
    """Cap this process's address space at what it uses now plus `extra` bytes."""
    import resource

    try:
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        used = 512 * 2**20
    for limit in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        soft, hard = resource.getrlimit(limit)
        want = used + extra
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        try:
            resource.setrlimit(limit, (want, hard))
        except (ValueError, OSError):
            pass


def _alarm(signum: int, frame: Any) -> None:
    if time.monotonic() > getattr(sandbox._clock, "deadline", math.inf):
        sandbox._clock.deadline = math.inf  # once per message
        raise RenderTimeout


def _serve(inp: int, out: int) -> None:
    def write(message: Any) -> None:
        body = json.dumps(message).encode("ascii")  # escapes lone surrogates too
        data = memoryview(_HEADER.pack(len(body)) + body)
        while data:
            data = data[os.write(out, data):]

    def read_exact(n: int) -> bytes | None:
        parts, want = [], n
        while want:
            data = os.read(inp, min(want, 1 << 20))
            if not data:
                return None
            parts.append(data)
            want -= len(data)
        return b"".join(parts)

    write("ready")
    while True:
        header = read_exact(_HEADER.size)
        if header is None:
            return
        body = read_exact(_HEADER.unpack(header)[0])
        if body is None:
            return
        source, html, partials, max_chars, seconds, name, strikes, rows = pickle.loads(body)
        ready = render.compiled(source, html, partials)
        pending: list[Any] = []
        size, last = 0, time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, FLUSH_SECONDS, FLUSH_SECONDS)
        try:
            for row in rows:
                if ready.error:
                    result: Any = [ready.error]
                elif strikes >= TIMEOUT_STRIKES:
                    result = [not_tried(name, seconds, strikes)]
                else:
                    try:
                        text = render.render_one(ready, row, max_chars=max_chars, seconds=seconds)
                    except RenderTimeout:  # raised after render_one had caught what it could
                        text = RenderFailure(f"render_timeout: over {seconds:g} s")
                    except MemoryError:
                        text = RenderFailure(render.failure_reason(MemoryError()))
                    result = [text.reason] if isinstance(text, RenderFailure) else text
                    strikes += isinstance(text, RenderFailure) and text.reason.startswith("render_timeout")
                pending.append(result)
                size += len(result) if isinstance(result, str) else 80
                now = time.monotonic()
                if size >= FLUSH_CHARS or now - last >= FLUSH_SECONDS:
                    write(pending)
                    pending, size, last = [], 0, now
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sandbox._clock.deadline = math.inf
        write(pending)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this process ends
    signal.signal(signal.SIGALRM, _alarm)
    out = os.dup(1)
    os.dup2(2, 1)  # anything printed by accident goes to stderr, never into the answers
    _limit_memory(int(argv[0]) if argv else RENDER_MEMORY_BYTES)
    try:
        _serve(0, out)
    except Exception:  # noqa: BLE001 - a bug of ours: hand the traceback to the parent
        import traceback

        body = json.dumps({"bug": traceback.format_exc()}).encode()
        os.write(out, _HEADER.pack(len(body)) + body)


if __name__ == "__main__":
    main(sys.argv[1:])
