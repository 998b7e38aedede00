"""One worker process: runs one system's worker until the parent raises the stop flag.

Started by bench/run.py as a plain subprocess so its RSS is the library's own (plus
the interpreter), not the harness's. Talks to the parent through a Control block and
writes the handler start times (latency workload) to a JSON file when it exits, or, for a
long run (--stream-starts DIR), into DIR as it goes: a file every STREAM_INTERVAL, which
the parent reads and deletes (harness.WorkerGroup.take_streamed_starts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapters import make_adapter
from adapters.base import Control, Hooks

STREAM_INTERVAL = 0.25
"""Seconds between two files of streamed handler starts."""


def _flush_starts(hooks: Hooks, directory: Path, seq: int) -> int:
    """Hand the starts recorded so far to the parent; returns the next file's number.

    Names sort in the order the files were written; each is written under a dot-name
    and renamed, so the parent never reads half a file.
    """
    starts = hooks.take_starts()
    if not starts:
        return seq
    partial = directory / f".{seq:012d}.tmp"
    partial.write_text("".join(f"{i} {t!r}\n" for i, t in starts))
    partial.rename(directory / f"{seq:012d}.txt")
    return seq + 1


async def _stream_starts(hooks: Hooks, directory: Path) -> None:
    """Stream the starts out until cancelled, then hand over the rest."""
    seq = 0
    try:
        while True:
            await asyncio.sleep(STREAM_INTERVAL)
            seq = _flush_starts(hooks, directory, seq)
    finally:
        _flush_starts(hooks, directory, seq)


async def _watch_stop(control: Control, stop: asyncio.Event) -> None:
    """Poll the parent's stop flag (20 ms) and turn it into an asyncio event."""
    while control.get(Control.STOP) == 0.0:  # noqa: ASYNC110 - shared memory, no event
        await asyncio.sleep(0.02)
    stop.set()


async def _main(args: argparse.Namespace, control: Control, hooks: Hooks) -> None:
    adapter = make_adapter(args.system)
    adapter.configure_worker(json.loads(args.settings))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_watch_stop(control, stop))]
    if args.stream_starts:
        tasks.append(asyncio.create_task(_stream_starts(hooks, Path(args.stream_starts))))
    try:
        await adapter.run_worker(
            args.dsn, args.concurrency, hooks, stop, lambda: control.set(Control.READY, 1.0)
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system")
    parser.add_argument("dsn")
    parser.add_argument("concurrency", type=int)
    parser.add_argument("control")
    parser.add_argument("result")
    parser.add_argument("--record-starts", action="store_true")
    parser.add_argument(
        "--stream-starts", metavar="DIR", help="record the starts and stream them into DIR"
    )
    parser.add_argument(
        "--settings", default="{}", help="JSON object: the system's worker settings"
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING, format=f"[{args.system} worker] %(levelname)s %(name)s: %(message)s"
    )

    control = Control(args.control)
    hooks = Hooks(control, args.record_starts or bool(args.stream_starts))
    result: dict[str, object] = {}
    code = 0
    try:
        asyncio.run(_main(args, control, hooks))
    except BaseException:
        result["error"] = traceback.format_exc(limit=8)
        code = 1
    result["starts"] = hooks.starts
    Path(args.result).write_text(json.dumps(result))
    control.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
