"""simplequeue for Django: add "simplequeue.contrib.django" to INSTALLED_APPS.

- `manage.py migrate` creates the queue's schema (in the database `SIMPLEQUEUE["DATABASE"]`);
- `manage.py simplequeue_worker myapp.jobs:SendEmail` runs workers;
- the admin shows jobs, the archive and the DLQ, read-only;
- `get_queue()` is this process's `SyncQueue`, and `connection` joins its inserts to the
  view's transaction: `get_queue().insert_job(job, conn=connection)`.

Settings (all optional), in `settings.SIMPLEQUEUE`: `DATABASE` (the alias whose database
holds the queue, default "default"), `DSN` (a connection string, default: that
database's settings), `SCHEMA` (default "simplequeue"), `OPTIONS` (QueueConfig settings
for `get_queue()`).
"""

from simplequeue.contrib.django.conf import dsn, get_queue, schema

__all__ = ["dsn", "get_queue", "schema"]
