"""simplequeue for Django: add "simplequeue.contrib.django" to INSTALLED_APPS.

- `manage.py migrate` creates the queue's schema (in the database `SIMPLEQUEUE["DATABASE"]`);
- `manage.py simplequeue_worker myapp.jobs:SendEmail` runs workers;
- the admin shows jobs, the archive and the DLQ, read-only;
- `get_queue()` is the project's queue, on Django's own connection: inside
  `transaction.atomic()` its inserts join the transaction.

Settings (all optional), in `settings.SIMPLEQUEUE`: `DATABASE` (the alias of the database
that holds the queue, default "default"), `SCHEMA` (default "simplequeue"), `DSN` (where
workers connect, default: that database), `OPTIONS` (QueueConfig settings for
`get_queue()`).
"""

from simplequeue.contrib.django.conf import DjangoQueue, dsn, get_queue, schema

__all__ = ["DjangoQueue", "dsn", "get_queue", "schema"]
