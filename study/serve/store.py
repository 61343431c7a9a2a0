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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = "2"

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
    plan         TEXT NOT NULL,
    panel        TEXT,
    panel_id     TEXT,
    condition    TEXT,
    screened_out_at TEXT,
    withdrawn_at TEXT
);
CREATE TABLE IF NOT EXISTS answers (
    participant_id TEXT NOT NULL REFERENCES participants(id),
    trial          TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('selection', 'annotation', 'catch')),
    image_id       TEXT NOT NULL,
    choice         INTEGER,
    polygons       TEXT,
    answered_at    TEXT NOT NULL,
    shown_at       TEXT,
    PRIMARY KEY (participant_id, trial)
);
CREATE TABLE IF NOT EXISTS shown (
    participant_id TEXT NOT NULL REFERENCES participants(id),
    trial          TEXT NOT NULL,
    shown_at       TEXT NOT NULL,
    PRIMARY KEY (participant_id, trial)
);
CREATE TABLE IF NOT EXISTS extra_tokens (
    token_hash     TEXT PRIMARY KEY,
    participant_id TEXT NOT NULL REFERENCES participants(id)
);
CREATE TABLE IF NOT EXISTS questionnaire (
    participant_id TEXT PRIMARY KEY REFERENCES participants(id),
    answers        TEXT NOT NULL,
    answered_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS withdrawals (
    participant_id TEXT NOT NULL,
    withdrawn_at   TEXT NOT NULL,
    answers_removed INTEGER NOT NULL,
    reason         TEXT NOT NULL
);
"""

#: Columns added after schema 1: ``ALTER TABLE`` adds them to a database made by an older version
#: (its answers stay; the new fields are empty for them).
_ADDED_COLUMNS = {
    "participants": ("panel TEXT", "panel_id TEXT", "condition TEXT", "screened_out_at TEXT", "withdrawn_at TEXT"),
    "answers": ("shown_at TEXT",),
}
_INDEXES = "CREATE UNIQUE INDEX IF NOT EXISTS participants_panel_id ON participants(panel_id) WHERE panel_id IS NOT NULL"


class AnswerConflict(Exception):
    """The trial was already answered differently; the stored answer stays."""


class Withdrawn(Exception):
    """The participant withdrew; nothing more is stored for them."""


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
    panel: dict = field(default_factory=dict)
    condition: str | None = None
    screened_out_at: str | None = None
    withdrawn_at: str | None = None


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
            _migrate(c)

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
    def create_participant(self, plan, consent: bool, max_participants: int | None = None,
                           panel: dict | None = None, panel_id: str | None = None) -> tuple[str, str] | None:
        """A new participant with ``plan``; returns ``(public id, secret token)``, or None when
        ``max_participants`` are already registered.

        ``plan`` is a list of trial keys, or ``{condition: plan}`` for a study with between-subject
        conditions: the participant then gets the condition with the fewest participants so far
        (the first such in ``plan``'s order), counted in the same transaction, so that
        simultaneous registrations stay balanced.

        ``panel`` holds the recruitment panel's link parameters and ``panel_id`` the one naming
        the person; a second registration with the same ``panel_id`` gets a new token for the
        participant who has it (see :meth:`resume`), never a second participant.
        """
        token = secrets.token_urlsafe(24)
        pid = str(uuid.uuid4())
        t = now_iso()
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            if panel_id is not None:
                old = c.execute("SELECT id FROM participants WHERE panel_id = ?", (panel_id,)).fetchone()
                if old is not None:  # registered meanwhile (double click, second tab): resume it
                    c.execute("INSERT INTO extra_tokens(token_hash, participant_id) VALUES (?, ?)",
                              (token_hash(token), old["id"]))
                    c.execute("COMMIT")
                    return old["id"], token
            if max_participants is not None:
                (n,) = c.execute("SELECT COUNT(*) FROM participants").fetchone()
                if n >= max_participants:
                    c.execute("ROLLBACK")
                    return None
            condition = None
            if isinstance(plan, dict):
                counts = dict(c.execute("SELECT condition, COUNT(*) FROM participants GROUP BY condition").fetchall())
                condition = min(plan, key=lambda name: counts.get(name, 0))  # min keeps the first of ties
                plan = plan[condition]
            c.execute("INSERT INTO participants(id, token_hash, created_at, updated_at, consent_at, plan, panel, "
                      "panel_id, condition) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (pid, token_hash(token), t, t, t if consent else None, json.dumps(plan),
                       json.dumps(panel or {}), panel_id, condition))
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        return pid, token

    def resume(self, panel_id: str) -> tuple[ParticipantRow, str] | None:
        """The participant registered with ``panel_id`` and a fresh token for them (their old
        link keeps working), or None when nobody has that panel id."""
        c = self._conn()
        r = c.execute("SELECT * FROM participants WHERE panel_id = ?", (panel_id,)).fetchone()
        if r is None:
            return None
        token = secrets.token_urlsafe(24)
        c.execute("INSERT INTO extra_tokens(token_hash, participant_id) VALUES (?, ?)", (token_hash(token), r["id"]))
        return _row(r), token

    def participant(self, token: str) -> ParticipantRow | None:
        """The participant holding ``token`` (their first link or one given on resuming), or None."""
        h = token_hash(token)
        c = self._conn()
        r = c.execute("SELECT * FROM participants WHERE token_hash = ?", (h,)).fetchone()
        if r is None:
            r = c.execute("SELECT p.* FROM participants p JOIN extra_tokens t ON t.participant_id = p.id "
                          "WHERE t.token_hash = ?", (h,)).fetchone()
        return None if r is None else _row(r)

    def by_id(self, participant_id: str) -> ParticipantRow | None:
        """The participant with public id ``participant_id``, or None."""
        r = self._conn().execute("SELECT * FROM participants WHERE id = ?", (participant_id,)).fetchone()
        return None if r is None else _row(r)

    def answered(self, participant_id: str) -> dict[str, sqlite3.Row]:
        """``{trial key: answer row}`` of one participant."""
        rows = self._conn().execute("SELECT * FROM answers WHERE participant_id = ?", (participant_id,))
        return {r["trial"]: r for r in rows}

    def mark_shown(self, participant_id: str, trial: str) -> None:
        """Record when ``trial`` was first shown to the participant (later showings keep the first
        time; a read decides, so that showing it again writes nothing)."""
        c = self._conn()
        if c.execute("SELECT 1 FROM shown WHERE participant_id = ? AND trial = ?", (participant_id, trial)).fetchone():
            return
        c.execute("INSERT OR IGNORE INTO shown(participant_id, trial, shown_at) VALUES (?, ?, ?)",
                  (participant_id, trial, now_iso()))

    def shown_times(self) -> dict[tuple[str, str], str]:
        """``{(participant id, trial): first shown}`` of everyone."""
        return {(r[0], r[1]): r[2] for r in self._conn().execute("SELECT participant_id, trial, shown_at FROM shown")}

    # ---------------------------------------------------------------------------- answers
    def submit(self, participant: ParticipantRow, trial: str, kind: str, image_id: str,
               choice: int | None = None, polygons: list | None = None, plan: list[str] | None = None,
               screen_out: bool = False, show_next: str | None = None) -> bool:
        """Store one answer in its own transaction.

        Returns True when it was stored, False when the very same answer was already there (a
        retried request). Marks the participant submitted when every trial of ``plan`` (default:
        the participant's stored plan) is answered, and screened out (their study ends) when
        ``screen_out`` is set. ``show_next`` (the trial the answer's response shows) gets its
        first-shown time in the same transaction: one disk sync per answer, not two.

        Raises
        ------
        AnswerConflict
            When the trial was already answered differently (the stored answer is kept).
        Withdrawn
            When the participant has withdrawn.
        """
        poly_json = None if polygons is None else json.dumps(polygons, separators=(",", ":"))
        t = now_iso()
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            _check_not_withdrawn(c, participant.id)
            old = c.execute("SELECT choice, polygons FROM answers WHERE participant_id = ? AND trial = ?",
                            (participant.id, trial)).fetchone()
            if old is not None:
                c.execute("ROLLBACK")
                if old["choice"] == choice and old["polygons"] == poly_json:
                    return False
                raise AnswerConflict(f"trial {trial} was already answered; answers cannot be changed")
            c.execute("INSERT INTO answers(participant_id, trial, kind, image_id, choice, polygons, answered_at, "
                      "shown_at) VALUES (?, ?, ?, ?, ?, ?, ?, (SELECT shown_at FROM shown WHERE participant_id = ? "
                      "AND trial = ?))", (participant.id, trial, kind, image_id, choice, poly_json, t,
                                          participant.id, trial))
            have = {r[0] for r in c.execute("SELECT trial FROM answers WHERE participant_id = ?", (participant.id,))}
            done = set(plan if plan is not None else participant.plan) <= have
            c.execute("UPDATE participants SET updated_at = ?, submitted_at = COALESCE(submitted_at, ?), "
                      "screened_out_at = COALESCE(screened_out_at, ?) WHERE id = ?",
                      (t, t if done and not screen_out else None, t if screen_out else None, participant.id))
            if show_next is not None and not screen_out:
                c.execute("INSERT OR IGNORE INTO shown(participant_id, trial, shown_at) VALUES (?, ?, ?)",
                          (participant.id, show_next, t))
            c.execute("COMMIT")
        except (AnswerConflict, Withdrawn):
            raise
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        return True

    def save_questionnaire(self, participant: ParticipantRow, answers: dict) -> bool:
        """Store the questionnaire answers once; True when stored, False for the very same answers
        again (a retry).

        Raises
        ------
        AnswerConflict
            When other answers were stored already (they are kept).
        Withdrawn
            When the participant has withdrawn.
        """
        text = json.dumps(answers, sort_keys=True, separators=(",", ":"))
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            _check_not_withdrawn(c, participant.id)
            old = c.execute("SELECT answers FROM questionnaire WHERE participant_id = ?", (participant.id,)).fetchone()
            if old is not None:
                c.execute("ROLLBACK")
                if old[0] == text:
                    return False
                raise AnswerConflict("the questionnaire was already answered; answers cannot be changed")
            c.execute("INSERT INTO questionnaire(participant_id, answers, answered_at) VALUES (?, ?, ?)",
                      (participant.id, text, now_iso()))
            c.execute("COMMIT")
        except (AnswerConflict, Withdrawn):
            raise
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        return True

    def questionnaire_of(self, participant_id: str) -> dict | None:
        """The participant's questionnaire answers, or None before they sent them."""
        r = self._conn().execute("SELECT answers FROM questionnaire WHERE participant_id = ?", (participant_id,)).fetchone()
        return None if r is None else json.loads(r[0])

    def questionnaires(self) -> dict[str, dict]:
        """``{participant id: questionnaire answers}`` of everyone who answered it."""
        return {r[0]: json.loads(r[1]) for r in self._conn().execute("SELECT participant_id, answers FROM questionnaire")}

    def withdraw(self, participant_id: str, reason: str = "withdrawn on request") -> int:
        """Delete every answer of ``participant_id`` and record the withdrawal; returns how many
        answers were removed. The participant row stays (without answers) so that the same link
        or panel id cannot start again; it is left out of the export.

        Raises
        ------
        KeyError
            When no participant has that id.
        """
        t = now_iso()
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            if c.execute("SELECT 1 FROM participants WHERE id = ?", (participant_id,)).fetchone() is None:
                raise KeyError(participant_id)
            n = c.execute("DELETE FROM answers WHERE participant_id = ?", (participant_id,)).rowcount
            c.execute("DELETE FROM shown WHERE participant_id = ?", (participant_id,))
            n += c.execute("DELETE FROM questionnaire WHERE participant_id = ?", (participant_id,)).rowcount
            c.execute("UPDATE participants SET withdrawn_at = COALESCE(withdrawn_at, ?), updated_at = ? WHERE id = ?",
                      (t, t, participant_id))
            c.execute("INSERT INTO withdrawals(participant_id, withdrawn_at, answers_removed, reason) "
                      "VALUES (?, ?, ?, ?)", (participant_id, t, n, reason))
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        return n

    def withdrawals(self) -> list[dict]:
        """Every recorded withdrawal: ``participant_id``, ``withdrawn_at``, ``answers_removed``, ``reason``."""
        return [dict(r) for r in self._conn().execute("SELECT * FROM withdrawals ORDER BY rowid")]

    def condition_counts(self) -> dict[str, int]:
        """Participants per condition (withdrawn ones included: they were assigned)."""
        rows = self._conn().execute("SELECT condition, COUNT(*) FROM participants GROUP BY condition")
        return {r[0]: r[1] for r in rows if r[0] is not None}

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
                          tuple(json.loads(r["plan"])), json.loads(r["panel"] or "{}"), r["condition"],
                          r["screened_out_at"], r["withdrawn_at"])


def _check_not_withdrawn(c: sqlite3.Connection, participant_id: str) -> None:
    r = c.execute("SELECT withdrawn_at FROM participants WHERE id = ?", (participant_id,)).fetchone()
    if r is not None and r[0] is not None:
        c.execute("ROLLBACK")
        raise Withdrawn(f"participant {participant_id} withdrew from the study; nothing more is stored")


def _migrate(c: sqlite3.Connection) -> None:
    """Add the columns of :data:`_ADDED_COLUMNS` that an older database lacks, and the indexes."""
    for table, cols in _ADDED_COLUMNS.items():
        have = {r[1] for r in c.execute(f"PRAGMA table_info({table})")}  # table names are ours, not input
        for col in cols:
            if col.split()[0] not in have:
                c.execute(f"ALTER TABLE {table} ADD COLUMN {col}")
    c.execute(_INDEXES)
