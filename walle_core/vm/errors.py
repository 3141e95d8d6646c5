"""Errors a task run can end with. All derive from :class:`walle_core.errors.WalleError`."""

from __future__ import annotations

from walle_core.errors import WalleError


class TaskError(WalleError):
    """Base class of task VM errors."""


class TaskSecurityError(TaskError):
    """The task tried a forbidden capability (import, file access, builtin, private attribute)."""


class TaskQuotaError(TaskError):
    """The task broke one of its quotas."""


class TaskTimeoutError(TaskQuotaError):
    """The task ran past its wall-time quota and was stopped."""


class TaskMemoryError(TaskQuotaError):
    """The task's accounted memory (engine buffers, outputs, data arrays) passed its quota."""


class OutputQuotaError(TaskQuotaError):
    """The task wrote more output bytes than its quota allows."""


class VMModeUnavailableError(TaskError):
    """The requested VM mode cannot run here (e.g. subinterpreters on Python < 3.12)."""
