"""The study database: participants and their answers in SQLite (WAL), one row per answer.

Every answer is committed when it is submitted (``synchronous=FULL``), so a server that is killed
keeps everything it acknowledged. Participants are found by the SHA-256 of their secret token (the
token itself is not stored); the export names them by a separate public id (a UUID, like the
original app). All SQL is parameterised.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS participants (
    id           TEXT PRIMARY KEY,
    token_hash   TEXT NOT NULL UNIQUE,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    submitted_at TEXT,
    consent_at   TEXT,
    plan         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS answers (
    participant_id TEXT NOT NULL REFERENCES participants(id),
    trial          TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('selection', 'annotation', 'catch')),
    image_id       TEXT NOT NULL,
    choice         INTEGER,
    polygons       TEXT,
    answered_at    TEXT NOT NULL,
    PRIMARY KEY (participant_id, trial)
);
"""


class AnswerConflict(Exception):
    """The trial was already answered differently; the stored answer stays."""


class StudyMismatch(RuntimeError):
    """The database belongs to a study with another display size (its polygons would not mix)."""


def now_iso() -> str:
    """UTC time as the original export writes it: ``2024-06-20T12:18:48.160Z``."""
    t = datetime.now(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ParticipantRow:
    id: str
    created_at: str
    updated_at: str
    submitted_at: str | None
    consent_at: str | None
    plan: tuple[str, ...]


class Store:
    """SQLite access for the study server; safe to share between threads (one connection each).

    Parameters
    ----------
    path : path
        The database file (created with its folder).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            # Autocommit mode: every write below opens its own explicit transaction.
            c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA synchronous=FULL")
            c.execute("PRAGMA foreign_keys=ON")
            c.execute("PRAGMA busy_timeout=30000")
            self._local.conn = c
        return c

    # ---------------------------------------------------------------------------- meta
    def check_study(self, fingerprint: str, display_size: int) -> str | None:
        """Record the study on first use; on later starts compare.

        Returns a warning text when the trials changed since the database was made (answers
        already given stay valid: they name images and full-sequence frame indices).

        Raises
        ------
        StudyMismatch
            When the display size differs: polygon coordinates would be in two frames.
        """
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            meta = {r["key"]: r["value"] for r in c.execute("SELECT key, value FROM meta")}
            if not meta:
                c.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                              [("schema", SCHEMA_VERSION), ("fingerprint", fingerprint),
                               ("display_size", str(display_size)), ("created_at", now_iso())])
                c.execute("COMMIT")
                return None
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        if meta.get("display_size") != str(display_size):
            raise StudyMismatch(
                f"{self.path} holds a study shown at {meta.get('display_size')} px, this one at "
                f"{display_size} px; use another --db (polygon coordinates of the two cannot be mixed)")
        if meta.get("fingerprint") != fingerprint:
            return (f"the study's trials differ from those {self.path} was made with (other images, "
                    f"frames or catch trials); stored answers are kept, and participants who started "
                    f"keep their original trial list")
        return None

    # ---------------------------------------------------------------------------- participants
    def create_participant(self, plan: list[str], consent: bool, max_participants: int | None = None
                           ) -> tuple[str, str] | None:
        """A new participant with ``plan``; returns ``(public id, secret token)``, or None when
        ``max_participants`` are already registered."""
        token = secrets.token_urlsafe(24)
        pid = str(uuid.uuid4())
        t = now_iso()
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            if max_participants is not None:
                (n,) = c.execute("SELECT COUNT(*) FROM participants").fetchone()
                if n >= max_participants:
                    c.execute("ROLLBACK")
                    return None
            c.execute("INSERT INTO participants(id, token_hash, created_at, updated_at, consent_at, plan) "
                      "VALUES (?, ?, ?, ?, ?, ?)",
                      (pid, token_hash(token), t, t, t if consent else None, json.dumps(plan)))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return pid, token

    def participant(self, token: str) -> ParticipantRow | None:
        """The participant holding ``token``, or None."""
        r = self._conn().execute("SELECT * FROM participants WHERE token_hash = ?", (token_hash(token),)).fetchone()
        return None if r is None else _row(r)

    def answered(self, participant_id: str) -> dict[str, sqlite3.Row]:
        """``{trial key: answer row}`` of one participant."""
        rows = self._conn().execute("SELECT * FROM answers WHERE participant_id = ?", (participant_id,))
        return {r["trial"]: r for r in rows}

    # ---------------------------------------------------------------------------- answers
    def submit(self, participant: ParticipantRow, trial: str, kind: str, image_id: str,
               choice: int | None = None, polygons: list | None = None, plan: list[str] | None = None) -> bool:
        """Store one answer in its own transaction.

        Returns True when it was stored, False when the very same answer was already there (a
        retried request). Marks the participant submitted when every trial of ``plan`` (default:
        the participant's stored plan) is answered.

        Raises
        ------
        AnswerConflict
            When the trial was already answered differently (the stored answer is kept).
        """
        poly_json = None if polygons is None else json.dumps(polygons, separators=(",", ":"))
        t = now_iso()
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            old = c.execute("SELECT choice, polygons FROM answers WHERE participant_id = ? AND trial = ?",
                            (participant.id, trial)).fetchone()
            if old is not None:
                c.execute("ROLLBACK")
                if old["choice"] == choice and old["polygons"] == poly_json:
                    return False
                raise AnswerConflict(f"trial {trial} was already answered; answers cannot be changed")
            c.execute("INSERT INTO answers(participant_id, trial, kind, image_id, choice, polygons, answered_at) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (participant.id, trial, kind, image_id, choice, poly_json, t))
            have = {r[0] for r in c.execute("SELECT trial FROM answers WHERE participant_id = ?", (participant.id,))}
            done = set(plan if plan is not None else participant.plan) <= have
            c.execute("UPDATE participants SET updated_at = ?, submitted_at = COALESCE(submitted_at, ?) WHERE id = ?",
                      (t, t if done else None, participant.id))
            c.execute("COMMIT")
        except AnswerConflict:
            raise
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        return True

    # ---------------------------------------------------------------------------- reading all
    def participants(self) -> list[ParticipantRow]:
        """Every participant, oldest first."""
        rows = self._conn().execute("SELECT * FROM participants ORDER BY created_at, rowid")
        return [_row(r) for r in rows]

    def all_answers(self) -> list[sqlite3.Row]:
        """Every answer row (participant_id, trial, kind, image_id, choice, polygons, answered_at)."""
        return list(self._conn().execute("SELECT * FROM answers ORDER BY answered_at, rowid"))

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None


def _row(r: sqlite3.Row) -> ParticipantRow:
    return ParticipantRow(r["id"], r["created_at"], r["updated_at"], r["submitted_at"], r["consent_at"],
                          tuple(json.loads(r["plan"])))
