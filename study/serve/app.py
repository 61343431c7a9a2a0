"""The study web app (Flask): participant pages, the JSON API, images by id, and the admin routes.

Routes (all under the optional root path)::

    GET  /                          start page (consent, "Start" / "Continue")
    GET  /p/<token>                 a participant's page; the token is their secret link
    GET  /admin                     admin page (asks for the admin token)
    GET  /api/study                 public study info
    POST /api/participants          register: {"consent": true} -> {"token", "link"}
    GET  /api/p/<token>             the participant's next trial and progress
    POST /api/p/<token>/answer      {"trial": key, "choice": int} or {"trial": key, "polygons": [[[x, y], ...], ...]}
    GET  /img/<image_id>/original   the original, by study image id
    GET  /img/<image_id>/frame/<k>  frame k of the full sequence, if a trial shows it
    GET  /admin/progress            JSON progress (admin token)
    GET  /admin/export.csv          the export in the original app's format (admin token)

Admin routes take the token as ``Authorization: Bearer <token>`` (or ``X-Admin-Token``): none
gives 401, a wrong one 403. Every participant request is validated here, on the server; a bad one
gets a 4xx JSON ``{"error": reason}`` and changes nothing.

Layout: the validators (:func:`participant_for`, :func:`check_admin`, :func:`json_object`,
:func:`registration_consent`, :func:`parse_answer`, :func:`parse_polygons`) are module-level
functions that return the checked value, or raise :class:`BadAnswer` (answered with 400) or an
HTTP error through ``abort``. The routes are on the Blueprint :data:`bp`; :func:`create_app` only
builds the Flask app, stores the study, the database and the admin secret in
``app.extensions["ldvce_study"]`` (a :class:`StudyContext`) and registers :data:`bp`.
"""
from __future__ import annotations

import hmac
import math
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from flask import Blueprint, Flask, Request, Response, abort, current_app, jsonify, render_template, request, send_file
from werkzeug.exceptions import HTTPException

from .design import NONE_CHOICE, Study
from .results import export_csv, progress
from .store import AnswerConflict, ParticipantRow, Store

HERE = Path(__file__).resolve().parent
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
#: Coordinates are kept to 1/100 px: enough for any screen, and the export stays readable.
COORD_DECIMALS = 2
#: Key of the :class:`StudyContext` in ``app.extensions``.
EXTENSION = "ldvce_study"

_CSP = ("default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def body_limit(study: Study) -> int:
    """Largest accepted request body in bytes: room for the largest allowed annotation."""
    c = study.config
    return max(16 * 1024, c["max_polygons"] * c["max_points"] * 48 + 4096)


class BadAnswer(ValueError):
    """A participant request that fails validation; the text says what and where."""


@dataclass(frozen=True)
class StudyContext:
    """What the routes serve: the study, its database and the admin secret (token as UTF-8 bytes)."""
    study: Study
    store: Store
    admin_secret: bytes


# ------------------------------------------------------------------------------------ validators
def participant_for(store: Store, token: str) -> ParticipantRow:
    """The participant holding ``token``; a malformed or unknown token aborts with 404."""
    if not _TOKEN_RE.match(token):
        abort(404, "unknown participant link")
    p = store.participant(token)
    if p is None:
        abort(404, "unknown participant link")
    return p


def admin_token_of(headers: Mapping[str, str]) -> str:
    """The admin token sent as ``Authorization: Bearer <token>`` or ``X-Admin-Token``, or ''."""
    auth = headers.get("Authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("X-Admin-Token", "")


def check_admin(headers: Mapping[str, str], secret: bytes) -> None:
    """Abort with 401 when no admin token is sent, with 403 when it is not ``secret``."""
    tok = admin_token_of(headers)
    if not tok:
        abort(401, "admin token required (header 'Authorization: Bearer <token>')")
    # Constant-time comparison: the response time does not tell how much of a guess was right.
    if not hmac.compare_digest(tok.encode("utf-8"), secret):
        abort(403, "wrong admin token")


def json_object(req: Request) -> dict:
    """The request's JSON body; aborts with 415 when it is not sent as JSON, 400 when not an object."""
    if not req.is_json:
        abort(415, "send the body as JSON (Content-Type: application/json)")
    data = req.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, "the body must be a JSON object")
    return data


def registration_consent(data: dict, consent_text: str | None) -> bool:
    """The ``consent`` of a registration body; it must be true when the study has a consent text."""
    if set(data) - {"consent"}:
        raise BadAnswer("only 'consent' may be sent when starting")
    consent = data.get("consent", False)
    if not isinstance(consent, bool):
        raise BadAnswer("'consent' must be true or false")
    if consent_text is not None and not consent:
        raise BadAnswer("please accept the consent text to take part")
    return consent


def trial_of(study: Study, key: str) -> tuple[str, str] | None:
    """``(kind, image id)`` of a trial key (``sel:<img>``, ``ann:<img>``, ``catch:<i>``), or None
    when the study no longer has that trial."""
    kind, _, ref = key.partition(":")
    if kind == "sel" and ref in study.selection_images:
        return "selection", ref
    if kind == "ann" and ref in study.annotation_images:
        return "annotation", ref
    if kind == "catch" and key in study.catch_trials:
        return "catch", study.catch_trials[key].image_id
    return None


def valid_plan(study: Study, p: ParticipantRow) -> list[str]:
    """The participant's trials that still exist in this study (all of them unless the config changed)."""
    return [k for k in p.plan if trial_of(study, k) is not None]


def parse_answer(study: Study, p: ParticipantRow, data: dict) -> tuple[str, str, str, int | None, list | None]:
    """``(trial key, kind, image id, choice, polygons)`` of an answer body; raises :class:`BadAnswer`."""
    key = data.get("trial")
    if not isinstance(key, str) or key not in p.plan:
        raise BadAnswer("'trial' must name one of your trials")
    t = trial_of(study, key)
    if t is None:
        raise BadAnswer(f"trial {key} is no longer part of this study")
    kind, img = t
    if kind in ("selection", "catch"):
        if set(data) != {"trial", "choice"}:
            raise BadAnswer("a selection answer is {\"trial\": key, \"choice\": frame}; other fields are not allowed")
        c = data["choice"]
        if isinstance(c, bool) or not isinstance(c, int):
            raise BadAnswer("'choice' must be an integer frame index (or -1 for none)")
        allowed = (study.images[img].shown_indices if kind == "selection"
                   else range(len(study.catch_trials[key].frames)))
        if c != NONE_CHOICE and c not in allowed:
            raise BadAnswer(f"'choice' {c} is not a frame shown in trial {key} "
                            f"(allowed: -1, {', '.join(map(str, allowed))})")
        return key, kind, img, c, None
    if set(data) != {"trial", "polygons"}:
        raise BadAnswer("an annotation answer is {\"trial\": key, \"polygons\": [[[x, y], ...], ...]}; "
                        "other fields are not allowed")
    cfg = study.config
    return key, kind, img, None, parse_polygons(data["polygons"], study.display_size, cfg["max_polygons"],
                                                cfg["max_points"])


def parse_polygons(polys, size: int, max_polygons: int, max_points: int) -> list:
    """Polygons as ``[[[x, y], ...], ...]`` inside a ``size``×``size`` image, coordinates rounded to
    :data:`COORD_DECIMALS`; raises :class:`BadAnswer` naming the polygon and point at fault."""
    if not isinstance(polys, list) or not polys:
        raise BadAnswer("'polygons' must be a non-empty list of polygons")
    if len(polys) > max_polygons:
        raise BadAnswer(f"{len(polys)} polygons; at most {max_polygons} are allowed")
    out = []
    for i, poly in enumerate(polys):
        if not isinstance(poly, list) or not 3 <= len(poly) <= max_points:
            n = len(poly) if isinstance(poly, list) else "no"
            raise BadAnswer(f"polygon {i} has {n} points; each needs 3 to {max_points} [x, y] points")
        pts = []
        for j, pt in enumerate(poly):
            if (not isinstance(pt, list) or len(pt) != 2
                    or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in pt)):
                raise BadAnswer(f"polygon {i} point {j} must be [x, y] numbers")
            x, y = float(pt[0]), float(pt[1])
            if not (math.isfinite(x) and math.isfinite(y) and 0 <= x <= size and 0 <= y <= size):
                raise BadAnswer(f"polygon {i} point {j} ({pt[0]}, {pt[1]}) lies outside the "
                                f"{size}x{size} image")
            pts.append([round(x, COORD_DECIMALS), round(y, COORD_DECIMALS)])
        out.append(pts)
    return out


# ------------------------------------------------------------------------------------ JSON views
def trial_json(study: Study, key: str, base: str) -> dict:
    """What the page needs to show one trial; URLs start with ``base`` (the root path)."""
    cfg = study.config
    kind, img = trial_of(study, key)
    out = {"key": key, "question": cfg["question"]}
    if kind == "annotation":
        out.update(kind="annotation", instructions=cfg["annotation_instructions"],
                   image_url=f"{base}/img/{img}/original", display_size=study.display_size,
                   max_polygons=cfg["max_polygons"], max_points=cfg["max_points"])
    else:
        # Each frame carries the value to send back: the full-sequence index for a study
        # trial, the position for a catch trial (whose frames may repeat).
        shown = (study.images[img].shown_indices if kind == "selection"
                 else study.catch_trials[key].frames)
        out.update(kind="selection", instructions=cfg["selection_instructions"], frame_size=cfg["frame_size"],
                   none_value=NONE_CHOICE,
                   frames=[{"value": k if kind == "selection" else pos, "url": f"{base}/img/{img}/frame/{k}"}
                           for pos, k in enumerate(shown)])
    return out


def participant_state(study: Study, store: Store, p: ParticipantRow, base: str) -> dict:
    """A participant's progress and next trial (None and the thank-you text when done)."""
    plan = valid_plan(study, p)
    done = store.answered(p.id)
    nxt = next((k for k in plan if k not in done), None)
    n_done = sum(k in done for k in plan)
    return {"participant": p.id, "answered": n_done, "total": len(plan), "done": nxt is None,
            "trial": trial_json(study, nxt, base) if nxt else None,
            "thank_you": study.config["thank_you"] if nxt is None else None}


# ------------------------------------------------------------------------------------ routes
bp = Blueprint("study", __name__)


def _ctx() -> StudyContext:
    return current_app.extensions[EXTENSION]


def _err(code: int, reason: str):
    return jsonify({"error": reason}), code


def _base() -> str:
    return request.script_root or ""


def _page(name: str):
    return render_template(name, base=_base(), title=_ctx().study.config["title"])


@bp.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    reason = {413: f"request body too large (limit {current_app.config['MAX_CONTENT_LENGTH']} bytes)"}.get(
        exc.code, exc.description)
    resp = jsonify({"error": reason})
    resp.status_code = exc.code or 500
    if exc.code == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="ldvce-study-admin"'
    return resp


@bp.after_app_request
def _headers(resp: Response):
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Content-Security-Policy"] = _CSP
    if request.path.startswith(("/api/", "/admin")) or request.path.startswith("/p/"):
        resp.headers["Cache-Control"] = "no-store"
    return resp


# ---- pages
@bp.get("/")
def index():
    return _page("study.html")


@bp.get("/p/<token>")
def participant_page(token):
    participant_for(_ctx().store, token)
    return _page("study.html")


@bp.get("/admin")
def admin_page():
    return _page("admin.html")


@bp.get("/favicon.ico")
def favicon():
    return "", 204


# ---- participant API
@bp.get("/api/study")
def study_info():
    study = _ctx().study
    cfg = study.config
    return jsonify({"title": cfg["title"], "question": cfg["question"], "consent": cfg["consent"],
                    "trials": len(study.selection_images) + len(study.annotation_images) + len(study.catch_trials)})


@bp.post("/api/participants")
def register():
    ctx = _ctx()
    cfg = ctx.study.config
    data = json_object(request)
    try:
        consent = registration_consent(data, cfg["consent"])
    except BadAnswer as exc:
        return _err(400, str(exc))
    # The trial order is seeded by a fresh random key (not the secret token).
    plan = ctx.study.plan(secrets.token_hex(8))
    made = ctx.store.create_participant(plan, consent, cfg["max_participants"])
    if made is None:
        return _err(403, "this study is full; thank you for your interest")
    _, token = made
    return jsonify({"token": token, "link": f"{_base()}/p/{token}"}), 201


@bp.get("/api/p/<token>")
def state(token):
    ctx = _ctx()
    return jsonify(participant_state(ctx.study, ctx.store, participant_for(ctx.store, token), _base()))


@bp.post("/api/p/<token>/answer")
def answer(token):
    ctx = _ctx()
    p = participant_for(ctx.store, token)
    data = json_object(request)
    try:
        key, kind, img, choice, polys = parse_answer(ctx.study, p, data)
    except BadAnswer as exc:
        return _err(400, str(exc))
    try:
        ctx.store.submit(p, key, kind, img, choice=choice, polygons=polys, plan=valid_plan(ctx.study, p))
    except AnswerConflict as exc:
        return _err(409, str(exc))
    return jsonify(participant_state(ctx.study, ctx.store, p, _base()))


# ---- images by id
@bp.get("/img/<image_id>/original")
def original(image_id):
    study = _ctx().study
    im = study.images.get(image_id)
    if im is None or image_id not in study.annotation_images:
        abort(404, "no such study image")
    return send_file(im.original, mimetype="image/png", max_age=3600)


@bp.get("/img/<image_id>/frame/<int:index>")
def frame(image_id, index):
    path = _ctx().study.frame_file(image_id, index)
    if path is None:
        abort(404, "no such frame in the study")
    return send_file(path, mimetype="image/png", max_age=3600)


# ---- admin
@bp.get("/admin/progress")
def admin_progress():
    ctx = _ctx()
    check_admin(request.headers, ctx.admin_secret)
    return jsonify(progress(ctx.study, ctx.store))


@bp.get("/admin/export.csv")
def admin_export():
    ctx = _ctx()
    check_admin(request.headers, ctx.admin_secret)
    return Response(export_csv(ctx.study, ctx.store), mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="studyentries.csv"'})


# ------------------------------------------------------------------------------------ app
def create_app(study: Study, store: Store, admin_token: str) -> Flask:
    """The Flask app serving ``study`` from ``store``; admin routes need ``admin_token``."""
    if not admin_token:
        raise ValueError("an admin token is required")
    app = Flask(__name__, static_folder=str(HERE / "static"), template_folder=str(HERE / "templates"))
    app.config["MAX_CONTENT_LENGTH"] = body_limit(study)
    app.json.sort_keys = False
    app.extensions[EXTENSION] = StudyContext(study, store, admin_token.encode("utf-8"))
    app.register_blueprint(bp)
    return app
