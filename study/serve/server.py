"""``ldvce study serve``: build the study from run folders and serve it with waitress."""
from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from .design import StudyConfigError, build_studies, load_config, studies_fingerprint
from .store import Store, StudyMismatch

DESCRIPTION = """\
Serve the user study in a browser, made from `ldvce generate` run folders.

Each participant opens the start page, gets a personal link (bookmark it: it continues where they
left off) and does, per image:
  selection   the frames of the counterfactual sequence in order; pick the first frame in which
              the attribute is visible, or "none" (stored as the frame's index in the run's full
              sequence: 0 original, 1 reconstruction, 2.. steps; -1 = none)
  annotation  the original at --config display_size (512 px); draw one or more polygons where the
              evidence is (click/tap to add corners, close, undo, delete), then submit
Answers are stored in the SQLite database (--db) the moment they are submitted; restarting the
server on the same --db loses nothing. The admin page (/admin) shows progress, withdraws
participants and downloads /admin/export.csv, the original study app's export format plus
Study/... columns (status, condition, panel parameters, catch score, timings, questionnaire),
which `ldvce study eval --export` reads.
"""

EPILOG = """\
examples:
  ldvce study serve runs/cf --db study.sqlite --port 8000 --admin-token "$(openssl rand -hex 16)"
  ldvce study serve runs/cf runs/cf2 --db study.sqlite --config configs/study/smiling.yaml
  # behind a reverse proxy that forwards https://example.org/study/ to 127.0.0.1:8000:
  ldvce study serve runs/cf --db study.sqlite --root-path /study
  # after the study:
  curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/admin/export.csv -o studyentries.csv
  ldvce study eval --export studyentries.csv --runs runs/cf --out runs/study --finished-only
  # a participant asks to have their answers removed:
  ldvce study withdraw --db study.sqlite PARTICIPANT_ID
  # on a recruitment panel (panel ids, completion codes, conditions, questionnaire):
  ldvce study serve --config configs/study/online.yaml --db study.sqlite --root-path /study
  #   participants open https://HOST/study/?PROLIFIC_PID=...&STUDY_ID=...&SESSION_ID=...
  #   step by step: docs/study_online.md

The admin token can also come from the environment variable LDVCE_STUDY_ADMIN_TOKEN (it then
does not show in the process list); without either, a random one is made and printed.
"""

TOKEN_ENV = "LDVCE_STUDY_ADMIN_TOKEN"
#: Bytes waitress accepts beyond the app's body limit (see :func:`make_server`).
WAITRESS_SLACK = 1 << 20


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``ldvce study serve``."""
    parser.add_argument("runs", nargs="*", type=Path, metavar="RUN_DIR",
                        help="`ldvce generate` output folder(s); every finished image is a study image "
                             "(image ids must be unique across the runs). Left out when the config's "
                             "'conditions' name each condition's runs")
    parser.add_argument("--db", required=True, type=Path, metavar="FILE",
                        help="SQLite database of participants and answers (created; reuse it to continue a study)")
    parser.add_argument("--config", type=Path, metavar="YAML", default=None,
                        help="study settings: question wording, images, frames per sequence, display size, "
                             "order, consent, catch trials (see configs/study/smiling.yaml); default: "
                             "the original study's design")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on; 0.0.0.0 for every interface (prefer a reverse proxy "
                             "with HTTPS for remote participants) (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default 8000)")
    parser.add_argument("--admin-token", default=None, metavar="TOKEN",
                        help=f"secret for /admin (at least 8 characters); default ${TOKEN_ENV} or a random one")
    parser.add_argument("--root-path", default="", metavar="PATH",
                        help="URL prefix when served behind a reverse proxy under a sub-path, e.g. /study")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the study and serve it until interrupted; returns an exit code."""
    token = args.admin_token or os.environ.get(TOKEN_ENV) or ""
    generated = not token
    if generated:
        token = secrets.token_urlsafe(18)
    if len(token) < 8:
        print("error: --admin-token must have at least 8 characters", file=sys.stderr)
        return 2
    if args.threads < 1:
        print("error: --threads must be at least 1", file=sys.stderr)
        return 2
    root = args.root_path.rstrip("/")
    if root and not root.startswith("/"):
        print(f"error: --root-path must start with '/', got {args.root_path!r}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
        if not args.runs and not cfg["conditions"]:
            raise StudyConfigError("give at least one RUN_DIR (or 'conditions' with their runs in --config)")
        studies = build_studies(args.runs, cfg)
        server, warning = make_server(studies, args.db, token, args.host, args.port, root, args.threads)
    except (StudyConfigError, StudyMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    host = args.host if args.host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = f"http://{host}:{server.effective_port}{root}/"
    for name, study in studies.items():
        n_sel, n_ann = len(study.selection_images), len(study.annotation_images)
        print(f"{'condition ' + name if name else 'study'}: {n_sel} selection + {n_ann} annotation trials "
              f"per participant, images at {study.display_size} px; answers in {args.db}")
    print(f"serving the study at {url}  (participants start here)")
    print(f"admin page: {url}admin   export: {url}admin/export.csv")
    if generated:
        print(f"admin token (generated): {token}")
    sys.stdout.flush()
    try:
        server.run()  # returns on Ctrl-C (waitress handles the KeyboardInterrupt)
    except KeyboardInterrupt:
        pass
    print(f"stopped; every submitted answer is in {args.db}")
    return 0


def make_server(study, db, admin_token: str, host: str = "127.0.0.1", port: int = 0, root_path: str = "",
                threads: int = 8):
    """A waitress server for ``study`` (a Study or ``{condition: Study}``; not yet running) and a
    warning about the database, if any."""
    # Flask and waitress load only to serve, not for `ldvce study serve --help`.
    from waitress import create_server

    from .app import body_limit, create_app

    studies = study if isinstance(study, dict) else {None: study}
    first = next(iter(studies.values()))
    store = Store(db)
    warning = store.check_study(studies_fingerprint(studies), first.display_size)
    app = create_app(studies, store, admin_token)
    # waitress's own limit sits well above the app's, so that an oversized body usually reaches
    # Flask and gets its JSON 413; waitress's plain-text 413 only guards memory against huge ones.
    server = create_server(app, host=host, port=port, threads=threads, url_prefix=root_path,
                           max_request_body_size=body_limit(first) + WAITRESS_SLACK, ident="ldvce-study",
                           clear_untrusted_proxy_headers=True)
    return server, warning
