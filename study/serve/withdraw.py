"""``ldvce study withdraw --db FILE ID``: remove one participant's answers from a study database.

The participant row stays, marked withdrawn (so the same link or panel id cannot start again),
and the withdrawal is recorded with its time, the number of answers removed and the reason; the
export then leaves the participant out. The admin page's "Withdraw" button does the same.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Withdraw a participant from a study: delete every answer they gave and record that it happened
(time, answers removed, reason). Give the participant id shown on their study page, in the admin
page and in the export's `id` column. Safe while `ldvce study serve` runs on the same --db.
"""

EPILOG = """\
examples:
  ldvce study withdraw --db study.sqlite 3f1c2a9e-5b7d-4e1f-9a0b-1c2d3e4f5a6b
  ldvce study withdraw --db study.sqlite 3f1c2a9e-... --reason "asked by e-mail on 2026-12-05"
"""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``ldvce study withdraw``."""
    parser.add_argument("participant", metavar="ID", help="the participant's public id (a UUID)")
    parser.add_argument("--db", required=True, type=Path, metavar="FILE", help="the study's SQLite database")
    parser.add_argument("--reason", default="withdrawn on request", help="recorded with the withdrawal")
    return parser


def run(args: argparse.Namespace) -> int:
    """Withdraw ``args.participant`` from ``args.db``; returns an exit code."""
    from .store import Store

    if not Path(args.db).is_file():
        print(f"error: study database not found: {args.db}", file=sys.stderr)
        return 2
    if not args.reason.strip():
        print("error: --reason must not be empty", file=sys.stderr)
        return 2
    store = Store(args.db)
    try:
        n = store.withdraw(args.participant, args.reason.strip())
    except KeyError:
        print(f"error: no participant with id {args.participant!r} in {args.db}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"withdrew {args.participant}: {n} answer(s) removed; the withdrawal is recorded in {args.db}")
    return 0
