"""The Django app."""

from __future__ import annotations

from django.apps import AppConfig


class SimpleQueueConfig(AppConfig):
    name = "simplequeue.contrib.django"
    label = "simplequeue"
    verbose_name = "simplequeue"
    default_auto_field = "django.db.models.BigAutoField"
