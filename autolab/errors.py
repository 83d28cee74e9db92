"""The exception tree. Every message says what happened and what to do next."""

from __future__ import annotations


class AutolabError(Exception):
    """Root of every error autolab raises on purpose."""


class TaskError(AutolabError):
    """A task folder or its task.toml is missing or malformed."""


class LogError(AutolabError):
    """The research log cannot be opened or written."""


class SchemaVersionError(LogError):
    """The log was written by a newer autolab than this one."""


class CandidateError(AutolabError):
    """A candidate could not be built: bad edit, protected file, or it does not compile."""


class RunError(AutolabError):
    """A run could not be started (not: a run that failed; that is a FAILED Run record)."""


class BudgetExceeded(AutolabError):
    """A spending cap (LLM cost or calls) was reached; the loop stops cleanly."""


class DataError(AutolabError):
    """A data set is missing, incomplete, or fails its hash check."""
