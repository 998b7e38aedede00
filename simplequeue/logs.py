"""How the `simplequeue` command logs: simplequeue's own loggers at the level asked for
(other libraries stay at WARNING, so `--log-level info` is not their chatter), as text
lines that carry a job's context, or as JSON lines.

Library code only logs, through loggers named `simplequeue.*`, with the job's context in
`extra` (`job_id`, `queue`, `attempt`); an application configures them as it likes.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

__all__ = ["CONTEXT", "FORMATS", "LEVELS", "configure"]

CONTEXT = ("job_id", "queue", "attempt")
"""What a record about one job carries in `extra`, shown by both formats."""

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"


def _context(record: logging.LogRecord) -> list[tuple[str, Any]]:
    return [(k, getattr(record, k)) for k in CONTEXT if getattr(record, k, None) is not None]


class _JobContext(logging.Filter):
    """Adds `context`: " [job_id=… queue=… attempt=…]" when the record is about a job."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = _context(record)
        record.context = (" [" + " ".join(f"{k}={v}" for k, v in found) + "]") if found else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the job's context, and the
    traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(
            (k, getattr(record, k)) for k in CONTEXT if getattr(record, k, None) is not None
        )
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """simplequeue's loggers at `level` in `fmt`; everything else at WARNING, as text."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_JobContext())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    ours = logging.getLogger("simplequeue")
    for old in list(ours.handlers):
        ours.removeHandler(old)
    ours.addHandler(handler)
    ours.setLevel(level.upper())
    ours.propagate = False  # not again through the root's handler
    others = logging.StreamHandler(stream or sys.stderr)
    others.addFilter(_JobContext())
    others.setFormatter(handler.formatter)
    logging.basicConfig(level=logging.WARNING, handlers=[others], force=True)
