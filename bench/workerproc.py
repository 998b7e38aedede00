"""One worker process: runs one system's worker until the parent raises the stop flag.

Started by bench/run.py as a plain subprocess so its RSS is the library's own (plus
the interpreter), not the harness's. Talks to the parent through a Control block and
writes the handler start times (latency workload) to a JSON file when it exits.
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


async def _watch_stop(control: Control, stop: asyncio.Event) -> None:
    """Poll the parent's stop flag (20 ms) and turn it into an asyncio event."""
    while control.get(Control.STOP) == 0.0:  # noqa: ASYNC110 - shared memory, no event
        await asyncio.sleep(0.02)
    stop.set()


async def _main(args: argparse.Namespace, control: Control, hooks: Hooks) -> None:
    adapter = make_adapter(args.system)
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_stop(control, stop))
    try:
        await adapter.run_worker(
            args.dsn, args.concurrency, hooks, stop, lambda: control.set(Control.READY, 1.0)
        )
    finally:
        watcher.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system")
    parser.add_argument("dsn")
    parser.add_argument("concurrency", type=int)
    parser.add_argument("control")
    parser.add_argument("result")
    parser.add_argument("--record-starts", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING, format=f"[{args.system} worker] %(levelname)s %(name)s: %(message)s"
    )

    control = Control(args.control)
    hooks = Hooks(control, args.record_starts)
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
