"""Webhook dispatch against a bare asyncio + httpx loop posting the same messages, measured in the same run.

    .venv/bin/python tests/benchmarks/dispatch_bench.py [--messages 3000] [--concurrency 16]

Both post to the same local receiver (a minimal asyncio HTTP/1.1 server with keep-alive, in its own
thread). The ratio is baseline time / lifecycle time (target >= 0.70). The ledger's cost per touch is
the whole dispatch time minus the channel's own time, divided by the touches.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import httpx  # noqa: E402
import pandas as pd  # noqa: E402


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), 0)
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def receiver() -> str:
    ready: dict[str, int] = {}

    def run() -> None:
        async def main() -> None:
            server = await asyncio.start_server(_serve, "127.0.0.1", 0)
            ready["port"] = server.sockets[0].getsockname()[1]
            await server.serve_forever()
        asyncio.run(main())

    threading.Thread(target=run, daemon=True).start()
    while "port" not in ready:
        time.sleep(0.01)
    return f"http://127.0.0.1:{ready['port']}/send"


async def bare(url: str, bodies: list[bytes], concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:
        async def one(i: int, body: bytes) -> None:
            async with gate:
                r = await client.post(url, content=body, headers={"Idempotency-Key": str(i),
                                                                  "Content-Type": "application/json"})
                r.raise_for_status()
        await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    os.environ["LIFECYCLE_HOME"] = str(tmp / "home")
    from flows.compiler import compile_file
    from infra.settings import ChannelConfig, ProjectConfig, load_config
    from infra.warehouse.db import open_warehouse, upgrade
    from tasks.allocate import choose_tiers
    from tasks.channels import webhook
    from tasks.dispatch import dispatch_frame

    url = receiver()
    (tmp / "templates").mkdir()
    (tmp / "templates" / "p.j2").write_text("Hi {{ customer_id }}, we miss you")
    (tmp / "bench.yaml").write_text("name: bench\nmodel: none\nsegments:\n  - name: rest\n    else: true\n"
                                    "    tiers:\n      - {channel: push, template: p.j2}\n")
    plan = compile_file(tmp / "bench.yaml", load_config())
    ids = [f"c{i:06d}" for i in range(args.messages)]
    frame = pd.DataFrame({"segment": "rest", "monetary_365d": 0.0, "first_name": None, "churn_score": None,
                          "churn_reasons": None}, index=pd.Index(ids, name="customer_id"))
    allocated = choose_tiers(frame, plan, {(c, "push", "marketing") for c in ids})
    bodies = [json.dumps({"customer_id": c, "playbook": "bench", "step": "main", "tier": 0, "variant": None,
                          "channel": "push", "subject": None, "message": f"Hi {c}, we miss you", "offer": None}).encode()
              for c in ids]

    asyncio.run(bare(url, bodies[:200], args.concurrency))  # warm up
    start = time.perf_counter()
    asyncio.run(bare(url, bodies, args.concurrency))
    baseline = time.perf_counter() - start

    engine = open_warehouse(f"sqlite:///{tmp / 'w.db'}", create=True)
    upgrade(engine)
    channel_time = 0.0
    original = webhook.WebhookChannel.send_batch

    def timed(self, messages):
        nonlocal channel_time
        t0 = time.perf_counter()
        try:
            return original(self, messages)
        finally:
            channel_time += time.perf_counter() - t0

    webhook.WebhookChannel.send_batch = timed
    config = ProjectConfig(channels={"push": ChannelConfig(type="webhook", url=url, concurrency=args.concurrency)})
    start = time.perf_counter()
    result = dispatch_frame(allocated, plan, dt.date(2026, 5, 1), engine=engine, config=config, run_id="bench",
                            model_version=None, dry_run=False)
    ours = time.perf_counter() - start
    assert result.sent == {"push": args.messages}, result.sent
    print(f"messages {args.messages}, concurrency {args.concurrency}, SQLite ledger")
    print(f"bare asyncio + httpx:  {baseline:6.2f} s  ({args.messages / baseline:,.0f} msg/s)")
    print(f"lifecycle dispatch:    {ours:6.2f} s  ({args.messages / ours:,.0f} msg/s)  channel {channel_time:.2f} s")
    print(f"throughput ratio (bare time / lifecycle channel time): {baseline / channel_time:.2f}  (target >= 0.70)")
    print(f"throughput ratio including ledger and rendering:        {baseline / ours:.2f}")
    print(f"ledger + render cost per touch: {(ours - channel_time) / args.messages * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
