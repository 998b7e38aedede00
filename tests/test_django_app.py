"""simplequeue.contrib.django in a real Django project, run as Django runs it (manage.py,
in processes of its own): migrate creates the queue's schema, a view's transaction holds
its job, the admin shows jobs read-only, and the management command runs workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import ROOT, count, query
from tests.test_docs_examples import examples

SCHEMA = "shopq"

SETTINGS = """
SECRET_KEY = "test"
DEBUG = True
USE_TZ = True
ALLOWED_HOSTS = ["testserver"]
ROOT_URLCONF = "urls"
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "simplequeue.contrib.django", "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DATABASES = {
    # server_side_binding: a Django-only OPTION, which the queue's connection string skips
    "default": {
        "ENGINE": "django.db.backends.postgresql", **DATABASE,
        "OPTIONS": {"server_side_binding": True},
    },
}
SIMPLEQUEUE = {"SCHEMA": "%(schema)s"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
"""

URLS = """
from django.contrib import admin
from django.urls import path
from shop.views import checkout, declined

urlpatterns = [
    path("admin/", admin.site.urls), path("checkout", checkout), path("declined", declined)
]
"""

SHOP_MODELS = """
from django.db import models

class Order(models.Model):
    email = models.TextField()
"""

# The view of docs/producers.md as it is written there, and one that fails after its insert.
SHOP_VIEWS = (
    examples()["django_views"]
    + """

def declined(request):
    with transaction.atomic():
        order = Order.objects.create(email=request.POST["email"])
        get_queue().insert_job(SendConfirmation.job({"order_id": order.pk}), conn=connection)
        raise RuntimeError("payment declined")   # the order and its job roll back
"""
)

SHOP_JOBS = """
import os

import pydantic
import simplequeue as sq


class Confirmation(pydantic.BaseModel):
    order_id: int


class SendConfirmation(sq.Handler[Confirmation]):
    QUEUE = "confirmations"

    def process(self, queue, job):
        with open(os.environ["CONFIRMED"], "a") as out:
            out.write(f"{job.payload.order_id}\\n")
"""

# Run in the project with manage.py's settings: the view through the test client, and
# the admin as a logged-in superuser.
CHECKS = """
import json
from django.contrib.auth.models import User
from django.test import Client

client = Client(raise_request_exception=False)
ok = client.post("/checkout", {"email": "a@example.com"})
failed = client.post("/declined", {"email": "b@example.com"})
admin = User.objects.create_superuser("admin", "admin@example.com", "pw")
client.force_login(admin)
pages = {
    name: client.get(url)
    for name, url in {
        "jobs": "/admin/simplequeue/job/",
        "filtered": "/admin/simplequeue/job/?status__exact=pending",
        "archive": "/admin/simplequeue/archivedjob/",
        "dlq": "/admin/simplequeue/deadjob/",
        "add": "/admin/simplequeue/job/add/",
    }.items()
}
print(json.dumps({
    "ok": [ok.status_code, ok.json()],
    "failed": failed.status_code,
    "pages": {name: page.status_code for name, page in pages.items()},
    "listed": pages["jobs"].content.decode(),
}))
"""


@pytest.fixture
def project(tmp_path: Path, dsn: str) -> Path:
    params = conninfo_to_dict(dsn)
    database = {
        "NAME": params["dbname"],
        "USER": params.get("user", "postgres"),
        "PASSWORD": params.get("password") or "",
        "HOST": params.get("host", "127.0.0.1"),
        "PORT": str(params.get("port", 5432)),
    }
    files = {
        "settings.py": f"DATABASE = {database!r}\n" + SETTINGS % {"schema": SCHEMA},
        "urls.py": URLS,
        "shop/__init__.py": "",
        "shop/models.py": SHOP_MODELS,
        "shop/views.py": SHOP_VIEWS,
        "shop/jobs.py": SHOP_JOBS,
        "manage.py": "import sys\nfrom django.core.management import execute_from_command_line\n"
        "execute_from_command_line(sys.argv)\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def environment(project: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings",
        "PYTHONPATH": os.pathsep.join([str(project), str(ROOT)]),
        "CONFIRMED": str(project / "confirmed.txt"),
    }


def manage(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project, env=environment(project), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.slow
def test_a_django_project_end_to_end(project: Path, dsn: str) -> None:
    manage(project, "migrate", "--run-syncdb")
    assert query(dsn, "SELECT count(*) FROM shopq.jobs") == [(0,)], "migrate made the schema"
    manage(project, "migrate")  # again: nothing to do, nothing breaks
    manage(project, "makemigrations", "--check", "--dry-run")  # the app's models: no changes

    import json

    checks = json.loads(manage(project, "shell", "-c", CHECKS).stdout.strip().splitlines()[-1])
    assert checks["ok"][0] == 200 and checks["failed"] == 500
    order = checks["ok"][1]["order"]
    assert query(dsn, "SELECT email FROM shop_order") == [("a@example.com",)]
    assert count(dsn, "true", table="jobs") == 0  # the default schema: untouched
    assert query(dsn, "SELECT queue, data->>'order_id' FROM shopq.jobs") == [
        ("confirmations", str(order))
    ]
    pages = checks["pages"]
    assert pages == {"jobs": 200, "filtered": 200, "archive": 200, "dlq": 200, "add": 403}
    (job_id,) = query(dsn, "SELECT id FROM shopq.jobs")[0]
    assert str(job_id) in checks["listed"] and "confirmations" in checks["listed"]

    worker = subprocess.Popen(
        [sys.executable, "manage.py", "simplequeue_worker", "shop.jobs:SendConfirmation", "--",
         "--empty-poll-sleep", "0.2", "--log-format", "json"],
        cwd=project, env=environment(project), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (project / "confirmed.txt").exists():
            time.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=60)[0]
    finally:
        worker.kill()
    assert worker.returncode == 0, output
    assert '"message": "worker stopped"' in output, "--log-format reached the worker"
    assert (project / "confirmed.txt").read_text() == f"{order}\n"
    assert query(dsn, "SELECT status FROM shopq.jobs") == [("completed",)]


def test_bad_settings_are_named(project: Path) -> None:
    settings = project / "settings.py"
    settings.write_text(settings.read_text() + "\nSIMPLEQUEUE = {'SCHEME': 'x'}\n")
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate"],
        cwd=project, env=environment(project), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "unknown keys ['SCHEME']" in done.stderr


APP_TESTS = """
from django.test import TransactionTestCase

import simplequeue as sq
from simplequeue.contrib.django import get_queue
from simplequeue.contrib.django.models import Job


class QueueTests(TransactionTestCase):
    def test_inserts_land_in_the_test_database(self):
        get_queue().insert_job(sq.Job("from-test", {"n": 1}))
        self.assertEqual(Job.objects.filter(queue="from-test").count(), 1)
        self.assertEqual(get_queue().counts()["pending"], 1)
"""


def test_manage_py_test_uses_the_test_database_and_leaves_none(project: Path, dsn: str) -> None:
    (project / "shop" / "tests.py").write_text(APP_TESTS)
    done = manage(project, "test", "shop", "--noinput")
    assert "OK" in done.stderr
    test_database = "test_" + conninfo_to_dict(dsn)["dbname"]
    assert query(dsn, "SELECT 1 FROM pg_database WHERE datname = %s", [test_database]) == []
    assert count(dsn, "queue = 'from-test'") == 0  # not in the project's own database


MULTI_DB = """
DATABASES["queue"] = {**DATABASES["default"], "NAME": DATABASE["NAME"] + "_queue"}
SIMPLEQUEUE = {"DATABASE": "queue", "SCHEMA": "mq"}
"""

MULTI_DB_CHECKS = """
import json
from django.contrib.auth.models import User
from django.test import Client

import simplequeue as sq
from simplequeue.contrib.django import get_queue
from simplequeue.contrib.django.models import Job

get_queue().insert_job(sq.Job("elsewhere", {"n": 1}))
client = Client(raise_request_exception=False)
client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
page = client.get("/admin/simplequeue/job/")
print(json.dumps({"count": Job.objects.count(), "page": page.status_code}))
"""


@pytest.mark.slow
def test_the_queue_in_another_database(project: Path, dsn: str) -> None:
    other = conninfo_to_dict(dsn)["dbname"] + "_queue"
    query(dsn, f"CREATE DATABASE {other}")
    try:
        settings = project / "settings.py"
        settings.write_text(settings.read_text() + MULTI_DB)
        manage(project, "migrate", "--run-syncdb")
        manage(project, "migrate", "--database=queue", "--run-syncdb")
        other_dsn = make_conninfo(dsn, dbname=other)
        assert query(other_dsn, "SELECT count(*) FROM mq.jobs") == [(0,)]
        assert query(dsn, "SELECT 1 FROM pg_namespace WHERE nspname = 'mq'") == []
        import json

        checks = json.loads(manage(project, "shell", "-c", MULTI_DB_CHECKS).stdout.splitlines()[-1])
        assert checks == {"count": 1, "page": 200}
        assert query(other_dsn, "SELECT queue FROM mq.jobs") == [("elsewhere",)]
    finally:
        query(dsn, f"DROP DATABASE {other} WITH (FORCE)")
