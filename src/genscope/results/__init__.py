"""Versioned run records in one embedded SQLite database (see :mod:`genscope.results.store`)."""

from __future__ import annotations

from genscope.results.store import (
    DEFAULT_PATH,
    ENV_VAR,
    SCHEMA_VERSION,
    ResultsStore,
    RunRecord,
    environment,
    git_commit,
    run_key,
)

__all__ = ["DEFAULT_PATH", "ENV_VAR", "SCHEMA_VERSION", "ResultsStore", "RunRecord", "environment", "git_commit",
           "run_key"]
