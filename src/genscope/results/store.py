"""Durable run records: one embedded SQLite database (one file) holding every run and its tables.

Why by hand: the standard library's ``sqlite3`` is the database; what is written here is the schema, the
safety checks and the queries - no library does those for us. The record itself, its key, environment and
the (lossless) DataFrame <-> JSON encoding of its tables are in :mod:`genscope.results.records`. The file runs
a little over 400 lines because the refusal paths (foreign, corrupt, read-only, concurrent writers) belong next
to the connection code they guard.

File: ``path`` if given, else ``$GENSCOPE_DB``, else ``~/.genscope/results.db``.

Schema (version 1):

* ``meta(key, value)``: ``application = genscope``, ``schema_version``, ``created_at``, ``created_by``; the
  file's SQLite header also carries ``PRAGMA application_id = 0x47534350`` ("GSCP").
* ``runs``: one row per run - study, workload, preset, settings (JSON), device, dtype, environment (JSON),
  git commit of genscope, created_at (UTC ISO), key (resume key), status.
* ``run_tables(run_id, name, position, data)``: the run's pandas tables, ``data`` being JSON
  (``{"columns", "dtypes", "index", "data"}``, floats written with Python's round-trip repr).

Safety:

* A run and all its tables are written in ONE transaction (``BEGIN IMMEDIATE``), so a reader never sees a
  half-written run and an interrupted sweep leaves only complete runs behind.
* Two writers are safe: WAL journal, a busy timeout, and ``BEGIN IMMEDIATE`` (the write lock is taken
  before anything is read, so no transaction ever has to be upgraded and fail with "database is locked").
* A new database is built in a temporary file next to the target and hard-linked into place, which fails
  if the name was taken meanwhile - so genscope never writes into a file it did not create.
* An existing file is checked from its raw header bytes before SQLite opens it read-write: a file that is
  not SQLite, or is SQLite with another application id, is refused with a ``UserError`` and left untouched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import sqlite3
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from genscope.errors import UserError
from genscope.results.records import (  # noqa: F401 - re-exported: the store's public names
    STATUS_COMPLETE,
    RunRecord,
    _dumps,
    environment,
    frame_from_json,
    frame_to_json,
    git_commit,
    measurement_validity,
    run_key,
)

SCHEMA_VERSION = 1
APPLICATION = "genscope"
APPLICATION_ID = 0x47534350  # "GSCP", stored in the SQLite header (offset 68) by PRAGMA application_id
DEFAULT_PATH = Path("~/.genscope/results.db")
ENV_VAR = "GENSCOPE_DB"
BUSY_TIMEOUT_S = 60.0

# SQLite file format (https://www.sqlite.org/fileformat.html#the_database_header): 16-byte magic string,
# application id as a big-endian 32-bit integer at byte offset 68; the header is 100 bytes long.
_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_BYTES = 100
_APP_ID_OFFSET = 68

_SCHEMA = f"""
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study TEXT NOT NULL,
    workload TEXT NOT NULL,
    preset TEXT NOT NULL,
    settings TEXT NOT NULL,
    device TEXT NOT NULL,
    dtype TEXT NOT NULL,
    environment TEXT NOT NULL,
    git_commit TEXT NOT NULL,
    created_at TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT '{STATUS_COMPLETE}'
);
CREATE INDEX runs_by_study ON runs (study, workload, preset, device, id);
CREATE INDEX runs_by_key ON runs (key);
CREATE TABLE run_tables (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
"""

_RUN_COLUMNS = ("id", "study", "workload", "preset", "settings", "device", "dtype", "environment",
                "git_commit", "created_at", "key", "status")


# ---------------------------------------------------------------------------------------------------------


def resolve_path(path: str | os.PathLike | None = None) -> Path:
    if path is None or str(path) == "":
        path = os.environ.get(ENV_VAR) or DEFAULT_PATH
    return Path(path).expanduser()


class ResultsStore:
    """The results database. ``ResultsStore()`` opens (creating if needed) ``$GENSCOPE_DB`` or the default.

    ``readonly=True`` (the read commands: runs, report): the file must exist - a mistyped ``--db`` is an
    error, never a new empty database - and is opened with SQLite's ``mode=ro``. A database in a folder this
    process cannot write (read-only media, another user's folder) is opened read-only in either mode; if its
    folder also lacks the WAL's ``-shm`` file, which SQLite would have to create, it is opened
    ``immutable=1`` - safe because without a ``-wal`` file every committed transaction is in the main file
    and no writer can be running (a writer would have created the ``-wal`` file).
    """

    def __init__(self, path: str | os.PathLike | None = None, *, readonly: bool = False) -> None:
        from genscope.validate import check_path_name

        self.path = check_path_name("results database path", resolve_path(path))
        self.readonly = readonly
        self._open()

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    # -- opening -------------------------------------------------------------------------------------------

    def _refuse(self, why: str) -> UserError:
        return UserError(f"results database {str(self.path)!r} {why}; genscope never writes into a file it "
                         "did not create - choose another --db PATH (or set GENSCOPE_DB)")

    def _open(self) -> None:
        if self.path.is_dir():
            raise UserError(f"results database path {str(self.path)!r} is a folder; give a file name, e.g. "
                            f"{str(self.path / 'results.db')!r}")
        if not self.path.exists():
            if self.readonly:
                raise UserError(f"no results database at {str(self.path)!r} (nothing stored there yet, or a "
                                "mistyped --db PATH)")
            self._create()
        self._check_header()
        self._check_meta()

    def _create(self) -> None:
        """Build the schema in a temporary file, then hard-link it into place (fails if the name is taken)."""
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = parent / f".{self.path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
            # os.open with 0o666 (not mkstemp's 0o600): the database gets the permissions the umask allows.
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except OSError as exc:
            raise UserError(f"cannot create results database {str(self.path)!r}: "
                            f"{exc.strerror or exc}") from None
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file header
                conn.execute("BEGIN")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                now = datetime.now(UTC).isoformat(timespec="seconds")
                import genscope

                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                 [("application", APPLICATION), ("schema_version", str(SCHEMA_VERSION)),
                                  ("created_at", now), ("created_by", f"genscope {genscope.__version__}")])
                conn.execute("COMMIT")
            finally:
                conn.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another process created it first: use theirs (checked like any existing file)
            except OSError:
                # No hard links on this file system: exclusive create, then copy the finished bytes in.
                try:
                    with open(self.path, "xb") as out:
                        out.write(tmp.read_bytes())
                except FileExistsError:
                    pass
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot create results database {str(self.path)!r}: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def _check_header(self) -> None:
        try:
            with open(self.path, "rb") as f:
                header = f.read(_HEADER_BYTES)
        except OSError as exc:
            raise UserError(f"cannot read results database {str(self.path)!r}: {exc.strerror or exc}") from None
        if len(header) == 0:
            raise self._refuse("is an empty file, not a genscope results database")
        if not header.startswith(_SQLITE_MAGIC):
            raise self._refuse("is not a SQLite database (not a genscope results database)")
        if len(header) < _HEADER_BYTES:
            raise UserError(f"results database {str(self.path)!r} is corrupt (truncated header); move it aside "
                            "or choose another --db PATH")
        app_id = int.from_bytes(header[_APP_ID_OFFSET:_APP_ID_OFFSET + 4], "big")
        if app_id != APPLICATION_ID:
            raise self._refuse(f"is a SQLite database of another application (application_id {app_id:#x})")

    def _check_meta(self) -> None:
        with self._connect() as conn:
            try:
                rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            except sqlite3.Error as exc:
                raise self._corrupt(exc) from None
        if rows.get("application") != APPLICATION:
            raise self._refuse("has genscope's application id but no genscope meta table")
        try:
            version = int(rows.get("schema_version", ""))
        except ValueError:
            raise self._corrupt("bad schema_version in meta") from None
        if version > SCHEMA_VERSION:
            raise UserError(f"results database {str(self.path)!r} has schema version {version}, written by a "
                            f"newer genscope; this one reads up to version {SCHEMA_VERSION}")

    def _corrupt(self, exc: object) -> UserError:
        return UserError(f"results database {str(self.path)!r} is unreadable or corrupt ({exc}); genscope will "
                         "not repair or overwrite it - move it aside or choose another --db PATH")

    def _uri(self) -> str:
        """SQLite URI: read-write, ``mode=ro``, or ``mode=ro&immutable=1`` (see the class docstring)."""
        from urllib.parse import quote

        folder = self.path.absolute().parent
        folder_writable = os.access(folder, os.W_OK | os.X_OK)
        uri = f"file:{quote(str(self.path.absolute()))}"
        if folder_writable and not self.readonly:
            return uri
        shm_ok = Path(f"{self.path}-shm").exists() or folder_writable
        wal_exists = Path(f"{self.path}-wal").exists()
        return f"{uri}?mode=ro" + ("&immutable=1" if not shm_ok and not wal_exists else "")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self._uri(), timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=True)
        except sqlite3.Error as exc:
            raise UserError(f"cannot open results database {str(self.path)!r}: {exc}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            yield conn
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if "readonly" in message or "unable to open" in message or "disk I/O" in message:
                raise UserError(f"cannot write results database {str(self.path)!r}: {message}") from None
            if "locked" in message or "busy" in message:
                raise UserError(f"results database {str(self.path)!r} stayed locked by another writer for "
                                f"{BUSY_TIMEOUT_S:.0f} s: {message}") from None
            raise self._corrupt(exc) from None
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from None
        finally:
            conn.close()

    # -- writing -------------------------------------------------------------------------------------------

    def save_run(self, record: RunRecord) -> int:
        """Store a run and all its tables in one transaction; returns the run id (also set on ``record``)."""
        for name in ("study", "workload", "preset", "device", "dtype"):
            value = getattr(record, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"RunRecord.{name} must be a non-empty string, got {value!r}")
        if not isinstance(record.settings, Mapping):
            raise TypeError(f"RunRecord.settings must be a dict, got {type(record.settings).__name__}")
        tables: list[tuple[str, int, str]] = []
        for position, (name, df) in enumerate(record.tables.items()):
            if not isinstance(name, str) or not name:
                raise ValueError(f"table names must be non-empty strings, got {name!r}")
            tables.append((name, position, frame_to_json(df)))
        key = record.key or run_key(record.study, record.workload, record.preset, record.settings,
                                    record.device, record.dtype)
        env = record.environment if record.environment is not None else environment()
        validity = measurement_validity(record.tables)
        if validity is not None:
            env = {**env, "measurement": validity}
        commit = record.git_commit or git_commit()
        created_at = record.created_at or datetime.now(UTC).isoformat(timespec="seconds")
        row = (record.study, record.workload, record.preset, _dumps(dict(record.settings)), record.device,
               record.dtype, _dumps(env), commit, created_at, key, record.status)
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = conn.execute(
                    "INSERT INTO runs (study, workload, preset, settings, device, dtype, environment, "
                    "git_commit, created_at, key, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                run_id = int(cursor.lastrowid)
                conn.executemany("INSERT INTO run_tables (run_id, name, position, data) VALUES (?, ?, ?, ?)",
                                 [(run_id, name, position, data) for name, position, data in tables])
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        record.id, record.key, record.environment = run_id, key, env
        record.git_commit, record.created_at = commit, created_at
        return run_id

    # -- reading -------------------------------------------------------------------------------------------

    def _record(self, conn: sqlite3.Connection, row: tuple, with_tables: bool = True) -> RunRecord:
        values = dict(zip(_RUN_COLUMNS, row, strict=True))
        tables: dict[str, pd.DataFrame] = {}
        if with_tables:
            for name, data in conn.execute("SELECT name, data FROM run_tables WHERE run_id = ? ORDER BY position",
                                           (values["id"],)):
                tables[name] = frame_from_json(data)
        return RunRecord(study=values["study"], workload=values["workload"], preset=values["preset"],
                         settings=json.loads(values["settings"]), device=values["device"], dtype=values["dtype"],
                         tables=tables, key=values["key"], environment=json.loads(values["environment"]),
                         git_commit=values["git_commit"], id=int(values["id"]), created_at=values["created_at"],
                         status=values["status"])

    def load_run(self, run_id: int) -> RunRecord:
        """The run with this id, tables included; an unknown id is a ``UserError``."""
        from genscope.validate import check_run_id

        run_id = check_run_id(run_id)
        with self._connect() as conn:
            row = conn.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                count = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
                raise UserError(f"no run with id {run_id} in {str(self.path)!r} ({count} runs stored; "
                                "`genscope runs list` shows them)")
            return self._record(conn, row)

    def latest(self, study: str, workload: str | None = None, preset: str | None = None,
               device: str | None = None, dtype: str | None = None) -> RunRecord | None:
        """The most recent complete run of ``study`` matching the given fields, or ``None``."""
        where, params = ["study = ?", "status = ?"], [study, STATUS_COMPLETE]
        for column, value in (("workload", workload), ("preset", preset), ("device", device), ("dtype", dtype)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(str(value))
        with self._connect() as conn:
            row = conn.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE {' AND '.join(where)} "
                               "ORDER BY id DESC LIMIT 1", params).fetchone()
            return None if row is None else self._record(conn, row)

    def has_key(self, key: str) -> bool:
        """Whether a complete run with this resume key is stored (see :func:`run_key`)."""
        with self._connect() as conn:
            row = conn.execute("SELECT 1 FROM runs WHERE key = ? AND status = ? LIMIT 1",
                               (key, STATUS_COMPLETE)).fetchone()
        return row is not None

    def list_runs(self, study: str | None = None, workload: str | None = None) -> pd.DataFrame:
        """One row per stored run (newest last): id, study, workload, preset, device, dtype, created_at,
        git_commit, key, status, tables (comma-separated names), stable and busy (see
        :func:`measurement_validity`; None for runs without timed comparisons or stored before them)."""
        where, params = [], []
        for column, value in (("study", study), ("workload", workload)):
            if value is not None:
                where.append(f"r.{column} = ?")
                params.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT r.id, r.study, r.workload, r.preset, r.device, r.dtype, r.created_at, r.git_commit, "
                "r.key, r.status, (SELECT group_concat(name, ',') FROM (SELECT name FROM run_tables t "
                f"WHERE t.run_id = r.id ORDER BY t.position)), r.environment FROM runs r {clause} ORDER BY r.id",
                params).fetchall()
        columns = ["id", "study", "workload", "preset", "device", "dtype", "created_at", "git_commit", "key",
                   "status", "tables", "environment"]
        df = pd.DataFrame(rows, columns=columns)
        validity = [json.loads(env or "{}").get("measurement") or {} for env in df.pop("environment")]
        df["stable"] = [v.get("stable") for v in validity]  # None: the run has no timed comparison
        df["busy"] = [v.get("busy") for v in validity]
        df["id"] = df["id"].astype("int64")
        df["tables"] = df["tables"].fillna("")
        return df

    def compare(self, id_a: int, id_b: int, keys: list[str] | None = None) -> dict[str, pd.DataFrame]:
        """Tables present in both runs, side by side: ``<col>_a``, ``<col>_b``, ``<col>_ratio`` (= b / a) for
        every numeric column of both.

        Rows are matched on ``keys`` (default: the non-numeric columns, e.g. workload, phase, op_class;
        repeated keys are matched in order); a table without key columns is matched row by row.
        """
        a, b = self.load_run(id_a), self.load_run(id_b)
        out: dict[str, pd.DataFrame] = {}
        for name, df_a in a.tables.items():
            if name not in b.tables:
                continue
            df_b = b.tables[name]
            df_a, df_b = _index_as_column(df_a), _index_as_column(df_b)
            numeric = [c for c in df_a.columns if c in df_b.columns and _is_number(df_a[c]) and _is_number(df_b[c])]
            key_cols = [c for c in (keys if keys is not None else
                                    [c for c in df_a.columns if c in df_b.columns and c not in numeric])
                        if c in df_a.columns and c in df_b.columns]
            numeric = [c for c in numeric if c not in key_cols]
            if not numeric:
                continue
            left = df_a[key_cols + numeric].reset_index(drop=True)
            right = df_b[key_cols + numeric].reset_index(drop=True)
            left["_nth"] = left.groupby(key_cols, sort=False, dropna=False).cumcount() if key_cols else left.index
            right["_nth"] = right.groupby(key_cols, sort=False, dropna=False).cumcount() if key_cols else right.index
            left["_pos_a"], right["_pos_b"] = range(len(left)), range(len(right))
            merged = left.merge(right, on=key_cols + ["_nth"], how="outer", suffixes=("_a", "_b"), sort=False)
            merged = merged.sort_values(["_pos_a", "_pos_b"], na_position="last", kind="stable")  # a's order
            merged = merged.reset_index(drop=True)
            columns = list(key_cols)
            for c in numeric:
                ratio = merged[f"{c}_b"].astype("float64") / merged[f"{c}_a"].astype("float64")
                merged[f"{c}_ratio"] = ratio.where(~ratio.isin([math.inf, -math.inf]))
                columns += [f"{c}_a", f"{c}_b", f"{c}_ratio"]
            out[name] = merged[columns]
        return out


def _index_as_column(df: pd.DataFrame) -> pd.DataFrame:
    default = isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1
    return df if default and df.index.name is None else df.reset_index()


def _is_number(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
