"""The queue's tables in the admin, read-only: browse, filter and search jobs."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from simplequeue.contrib.django.models import ArchivedJob, DeadJob, Job


class ReadOnlyJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "queue",
        "status",
        "attempt",
        "max_attempts",
        "priority",
        "run_at",
        "updated_at",
    )
    list_filter = ("queue", "status")
    search_fields = ("=id", "=unique_key", "=fingerprint", "queue")
    date_hierarchy = "created_at"
    show_full_result_count = False  # a count(*) of a large jobs table on every page

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


for model in (Job, ArchivedJob, DeadJob):
    admin.site.register(model, ReadOnlyJobAdmin)
