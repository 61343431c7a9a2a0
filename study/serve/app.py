"""The study web app (Flask): participant pages, the JSON API, images by id, and the admin routes.

Routes (all under the optional root path)::

    GET  /                          start page (consent, "Start" / "Continue")
    GET  /p/<token>                 a participant's page; the token is their secret link
    GET  /admin                     admin page (asks for the admin token)
    GET  /api/study                 public study info
    POST /api/participants          register: {"consent": true, <panel params>} -> {"token", "link"}
                                    (panel params also as the query string; a known panel id resumes)
    GET  /api/p/<token>             the participant's next trial and progress
    POST /api/p/<token>/answer      {"trial": key, "choice": int} or {"trial": key, "polygons": [[[x, y], ...], ...]}
    POST /api/p/<token>/questionnaire  {"answers": {name: value}} after the last trial (if configured)
    GET  /img/<image_id>/original   the original, by study image id
    GET  /img/<image_id>/frame/<k>  frame k of the full sequence, if a trial shows it
    GET  /admin/progress            JSON progress (admin token)
    GET  /admin/export.csv          the export in the original app's format (admin token)
    POST /admin/withdraw            {"participant": id, "reason": text}: remove their answers (admin token)

Admin routes take the token as ``Authorization: Bearer <token>`` (or ``X-Admin-Token``): none
gives 401, a wrong one 403. Every participant request is validated here, on the server; a bad one
gets a 4xx JSON ``{"error": reason}`` and changes nothing; a page route (``/p/<token>``) answers
an HTML page that says what went wrong instead.

Layout: the validators (:func:`participant_for`, :func:`check_admin`, :func:`json_object`,
:func:`registration_consent`, :func:`parse_answer`, :func:`parse_polygons`) are module-level
functions that return the checked value, or raise :class:`BadAnswer` (answered with 400) or an
HTTP error through ``abort``. The routes are on the Blueprint :data:`bp`; :func:`create_app` only
builds the Flask app, stores the study, the database and the admin secret in
``app.extensions["ldvce_study"]`` (a :class:`StudyContext`) and registers :data:`bp`.
"""
from __future__ import annotations

import hmac
import json
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
from .store import AnswerConflict, ParticipantRow, Store, Withdrawn

HERE = Path(__file__).resolve().parent
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
#: Panel parameter values (Prolific ids are 24 hex digits): a safe, bounded alphabet.
_PANEL_VALUE_RE = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")
#: A polygon must enclose at least this many square display pixels (three equal corners do not).
MIN_POLYGON_AREA = 1.0
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


class OutOfOrder(ValueError):
    """An answer to a trial that is not the participant's current one (answered with 409)."""


@dataclass(frozen=True)
class StudyContext:
    """What the routes serve: the study of each between-subject condition (key None when the
    study has no conditions), the database and the admin secret (token as UTF-8 bytes)."""
    studies: dict
    store: Store
    admin_secret: bytes

    @property
    def study(self) -> Study:
        """The first condition's study: what every condition shares (config, texts, sizes)."""
        return next(iter(self.studies.values()))

    def study_of(self, p: ParticipantRow) -> Study:
        """The study of ``p``'s condition (the first one for a participant from before conditions)."""
        return self.studies.get(p.condition) or self.study

    def study_named(self, condition: str | None) -> Study | None:
        """The study of condition ``condition`` as image URLs name it (``?c=``; none without
        conditions), or None for an unknown one."""
        return self.studies.get(condition or None)


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


def registration_consent(data: dict, consent_text: str | None, panel_params: tuple[str, ...] = ()) -> bool:
    """The ``consent`` of a registration body; it must be true when the study has a consent text.
    Besides ``consent`` only the configured panel parameters may be sent."""
    extra = set(data) - {"consent"} - set(panel_params)
    if extra:
        allowed = ", ".join(["consent", *panel_params])
        raise BadAnswer(f"unknown field(s) {', '.join(sorted(extra))} when starting (allowed: {allowed})")
    consent = data.get("consent", False)
    if not isinstance(consent, bool):
        raise BadAnswer("'consent' must be true or false")
    if consent_text is not None and not consent:
        raise BadAnswer("please accept the consent text to take part")
    return consent


def panel_values(cfg: dict, query: Mapping[str, str], data: dict) -> dict[str, str]:
    """The configured panel parameters from the link's query string and the JSON body (the body
    wins); other query parameters are ignored (links often carry tracking ones), bad values raise
    :class:`BadAnswer`."""
    out = {}
    for name in cfg["panel_params"]:
        v = data.get(name, query.get(name))
        if v is None or v == "":
            continue
        if not isinstance(v, str) or not _PANEL_VALUE_RE.match(v):
            raise BadAnswer(f"panel parameter {name} must be 1 to 128 letters, digits or _.:@+- ; got {str(v)[:40]!r}")
        out[name] = v
    return out


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
        area = polygon_area(pts)
        if area < MIN_POLYGON_AREA:
            raise BadAnswer(f"polygon {i} encloses no area ({area:g} square px; its corners are equal or "
                            f"on one line); draw a shape around the region")
        out.append(pts)
    return out


def parse_questionnaire(questions: list[dict], data: dict) -> dict:
    """The checked ``{"answers": {name: value}}`` of a questionnaire body: known names only,
    numbers within their range, choices among their options, texts within their length; an
    unanswered optional question is left out. Raises :class:`BadAnswer`."""
    if set(data) != {"answers"} or not isinstance(data["answers"], dict):
        raise BadAnswer("the questionnaire is sent as {\"answers\": {name: value}}")
    given = data["answers"]
    byname = {q["name"]: q for q in questions}
    unknown = sorted(set(given) - set(byname))
    if unknown:
        raise BadAnswer(f"unknown question(s) {', '.join(unknown)[:200]}")
    out = {}
    for name, q in byname.items():
        v = given.get(name)
        if v is None or v == "":
            if q["required"]:
                raise BadAnswer(f"please answer '{q['label']}'")
            continue
        out[name] = _question_value(q, v)
    return out


def _question_value(q: dict, v):
    """One checked answer (see :func:`parse_questionnaire`)."""
    label = q["label"]
    if q["type"] == "number":
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise BadAnswer(f"'{label}' must be a number")
        if ("min" in q and v < q["min"]) or ("max" in q and v > q["max"]):
            raise BadAnswer(f"'{label}' must be between {q.get('min', '-inf')} and {q.get('max', 'inf')}")
        return v
    if not isinstance(v, str):
        raise BadAnswer(f"'{label}' must be a text")
    if q["type"] == "choice":
        if v not in q["options"]:
            raise BadAnswer(f"'{label}' must be one of the options shown")
        return v
    v = v.strip()
    if len(v) > q["max_length"]:
        raise BadAnswer(f"'{label}' is {len(v)} characters long; at most {q['max_length']} are allowed")
    return v


def polygon_area(pts: list) -> float:
    """Area of a simple polygon by the shoelace formula (absolute value)."""
    n = len(pts)
    return abs(sum(pts[k][0] * pts[(k + 1) % n][1] - pts[(k + 1) % n][0] * pts[k][1] for k in range(n))) / 2


# ------------------------------------------------------------------------------------ JSON views
def trial_json(study: Study, key: str, base: str) -> dict:
    """What the page needs to show one trial; URLs start with ``base`` (the root path) and name
    the study's condition (``?c=``), whose run may show other frames under the same image id."""
    cfg = study.config
    kind, img = trial_of(study, key)
    q = f"?c={study.condition}" if study.condition else ""
    out = {"key": key, "question": cfg["question"]}
    if kind == "annotation":
        out.update(kind="annotation", instructions=cfg["annotation_instructions"],
                   image_url=f"{base}/img/{img}/original{q}", display_size=study.display_size,
                   max_polygons=cfg["max_polygons"], max_points=cfg["max_points"])
    else:
        # Each frame carries the value to send back: the full-sequence index for a study
        # trial, the position for a catch trial (whose frames may repeat).
        shown = (study.images[img].shown_indices if kind == "selection"
                 else study.catch_trials[key].frames)
        out.update(kind="selection", instructions=cfg["selection_instructions"], frame_size=cfg["frame_size"],
                   none_value=NONE_CHOICE,
                   frames=[{"value": k if kind == "selection" else pos, "url": f"{base}/img/{img}/frame/{k}{q}"}
                           for pos, k in enumerate(shown)])
    return out


def next_trial(study: Study, p: ParticipantRow, done) -> str | None:
    """The participant's next unanswered trial; None when finished, screened out or withdrawn."""
    if p.screened_out_at or p.withdrawn_at:
        return None
    return next((k for k in valid_plan(study, p) if k not in done), None)


def participant_state(study: Study, store: Store, p: ParticipantRow, base: str) -> dict:
    """A participant's progress and next trial (None, the thank-you text and the completion code
    or link when done; the screened-out ones when screened out)."""
    cfg = study.config
    plan = valid_plan(study, p)
    done = store.answered(p.id)
    nxt = next_trial(study, p, done)
    if nxt is not None:
        store.mark_shown(p.id, nxt)  # the time per trial counts from the first showing
    status = ("withdrawn" if p.withdrawn_at else "screened_out" if p.screened_out_at
              else "finished" if nxt is None else "running")
    # After the last trial, the questionnaire (if any) comes before the end page.
    asking = status == "finished" and bool(cfg["questionnaire"]) and store.questionnaire_of(p.id) is None
    ended = nxt is None and not asking
    return {"participant": p.id, "answered": sum(k in done for k in plan), "total": len(plan),
            "done": ended, "status": status,
            "trial": trial_json(study, nxt, base) if nxt else None,
            "questionnaire": cfg["questionnaire"] if asking else None,
            "thank_you": cfg["thank_you"] if ended else None,
            "completion": (cfg["screened_out"] if status == "screened_out"
                           else cfg["completion"] if status == "finished" and ended else None)}


def check_order(study: Study, p: ParticipantRow, key: str, done) -> None:
    """Raise :class:`OutOfOrder` unless ``key`` is the participant's next trial (or one already
    answered: a retry, which the store answers itself)."""
    if key in done:
        return
    nxt = next_trial(study, p, done)
    if nxt is None:
        raise OutOfOrder("your study has ended; no more answers are taken")
    if key != nxt:
        raise OutOfOrder(f"trial {key} is not the current one ({nxt}); answer the trials in the order shown")


def kept_answer(study: Study, row) -> dict:
    """The stored answer of a trial as the page can show it: the polygons, or the choice and the
    1-based position of the chosen frame as the participant saw it (None for "none")."""
    if row["polygons"] is not None:
        return {"trial": row["trial"], "polygons": json.loads(row["polygons"])}
    c, shown = row["choice"], ()
    if row["kind"] == "selection" and row["image_id"] in study.images:
        shown = study.images[row["image_id"]].shown_indices
    elif row["kind"] == "catch" and row["trial"] in study.catch_trials:
        shown = range(len(study.catch_trials[row["trial"]].frames))
    pos = list(shown).index(c) + 1 if c in shown else None
    return {"trial": row["trial"], "choice": c, "position": pos}


def screens_out(study: Study, p: ParticipantRow, done, key: str, choice: int | None) -> bool:
    """Whether answering catch trial ``key`` with ``choice`` takes the failed catch trials past
    ``max_failed_catch`` (the participant is then screened out)."""
    limit = study.config["max_failed_catch"]
    if limit is None or not key.startswith("catch:"):
        return False
    failed = sum(1 for k, r in done.items() if k in study.catch_trials
                 and r["choice"] != study.catch_trials[k].expect)
    return failed + (choice != study.catch_trials[key].expect) > limit


# ------------------------------------------------------------------------------------ routes
bp = Blueprint("study", __name__)


def _ctx() -> StudyContext:
    return current_app.extensions[EXTENSION]


def _err(code: int, reason: str):
    return jsonify({"error": reason}), code


def _base() -> str:
    return request.script_root or ""


def _page(name: str, **extra):
    cfg = _ctx().study.config
    return render_template(name, base=_base(), title=cfg["title"], lang=cfg["language"], texts=cfg["texts"], **extra)


def _is_page(path: str) -> bool:
    """A route a person opens in the browser (answered with HTML), not an API call."""
    return path.startswith("/p/") or path in ("/", "/admin")


@bp.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    reason = {413: f"request body too large (limit {current_app.config['MAX_CONTENT_LENGTH']} bytes)"}.get(
        exc.code, exc.description)
    if _is_page(request.path) and request.method == "GET":
        # A mistyped or cut-off participant link: a page that says so, not raw JSON.
        return _page("error.html", code=exc.code, reason=reason), exc.code or 500
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
                    "trials": len(study.selection_images) + len(study.annotation_images) + len(study.catch_trials),
                    "panel_params": cfg["panel_params"], "panel_id_param": cfg["panel_id_param"],
                    "texts": cfg["texts"]})


@bp.post("/api/participants")
def register():
    ctx = _ctx()
    cfg = ctx.study.config
    data = json_object(request)
    try:
        consent = registration_consent(data, cfg["consent"], tuple(cfg["panel_params"]))
        panel = panel_values(cfg, request.args, data)
    except BadAnswer as exc:
        return _err(400, str(exc))
    panel_id = panel.get(cfg["panel_id_param"]) if cfg["panel_id_param"] else None
    if panel_id is not None:
        back = ctx.store.resume(panel_id)
        if back is not None:  # the same panel member again: their study, not a second one
            p, token = back
            if p.withdrawn_at:
                return _err(403, "you withdrew from this study; thank you for your time")
            return jsonify({"token": token, "link": f"{_base()}/p/{token}", "resumed": True}), 200
    # The trial order is seeded by a fresh random key (not the secret token); the store picks the
    # condition with the fewest participants (balanced assignment) inside its transaction.
    seed_key = secrets.token_hex(8)
    plans = {name: study.plan(seed_key) for name, study in ctx.studies.items()}
    made = ctx.store.create_participant(plans if None not in plans else plans[None], consent,
                                        cfg["max_participants"], panel=panel, panel_id=panel_id)
    if made is None:
        return _err(403, "this study is full; thank you for your interest")
    _, token = made
    return jsonify({"token": token, "link": f"{_base()}/p/{token}", "resumed": False}), 201


@bp.get("/api/p/<token>")
def state(token):
    ctx = _ctx()
    p = participant_for(ctx.store, token)
    return jsonify(participant_state(ctx.study_of(p), ctx.store, p, _base()))


@bp.post("/api/p/<token>/answer")
def answer(token):
    ctx = _ctx()
    p = participant_for(ctx.store, token)
    data = json_object(request)
    study = ctx.study_of(p)
    try:
        key, kind, img, choice, polys = parse_answer(study, p, data)
    except BadAnswer as exc:
        return _err(400, str(exc))
    done = ctx.store.answered(p.id)
    try:
        check_order(study, p, key, done)
        after = next((k for k in valid_plan(study, p) if k not in done and k != key), None)
        ctx.store.submit(p, key, kind, img, choice=choice, polygons=polys, plan=valid_plan(study, p),
                         screen_out=screens_out(study, p, done, key, choice), show_next=after)
    except OutOfOrder as exc:
        return _conflict(str(exc), None, p)
    except Withdrawn as exc:
        return _conflict(str(exc), None, p)
    except AnswerConflict as exc:
        # Answered meanwhile elsewhere (a second browser): say which answer was kept.
        return _conflict(str(exc), kept_answer(study, ctx.store.answered(p.id)[key]), p)
    return jsonify(participant_state(study, ctx.store, ctx.store.by_id(p.id), _base()))


@bp.post("/api/p/<token>/questionnaire")
def questionnaire(token):
    ctx = _ctx()
    p = participant_for(ctx.store, token)
    study = ctx.study_of(p)
    data = json_object(request)
    if participant_state(study, ctx.store, p, _base())["questionnaire"] is None \
            and ctx.store.questionnaire_of(p.id) is None:
        return _conflict("the questionnaire comes after the last trial", None, p)
    try:
        answers = parse_questionnaire(study.config["questionnaire"], data)
    except BadAnswer as exc:
        return _err(400, str(exc))
    try:
        ctx.store.save_questionnaire(p, answers)
    except (AnswerConflict, Withdrawn) as exc:
        return _conflict(str(exc), None, p)
    return jsonify(participant_state(study, ctx.store, ctx.store.by_id(p.id), _base()))


def _conflict(reason: str, kept: dict | None, p: ParticipantRow):
    """A 409 with the reason, the answer that was kept (if any) and where the participant now is."""
    ctx = _ctx()
    state = participant_state(ctx.study_of(p), ctx.store, ctx.store.by_id(p.id), _base())
    return jsonify({"error": reason, "kept": kept, "state": state}), 409


# ---- images by id
@bp.get("/img/<image_id>/original")
def original(image_id):
    study = _ctx().study_named(request.args.get("c"))
    im = study.images.get(image_id) if study else None
    if im is None or image_id not in study.annotation_images:
        abort(404, "no such study image")
    return send_file(im.original, mimetype="image/png", max_age=3600)


@bp.get("/img/<image_id>/frame/<int:index>")
def frame(image_id, index):
    study = _ctx().study_named(request.args.get("c"))
    path = study.frame_file(image_id, index) if study else None
    if path is None:
        abort(404, "no such frame in the study")
    return send_file(path, mimetype="image/png", max_age=3600)


# ---- admin
@bp.get("/admin/progress")
def admin_progress():
    ctx = _ctx()
    check_admin(request.headers, ctx.admin_secret)
    return jsonify(progress(ctx.studies, ctx.store))


@bp.get("/admin/export.csv")
def admin_export():
    ctx = _ctx()
    check_admin(request.headers, ctx.admin_secret)
    return Response(export_csv(ctx.studies, ctx.store), mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="studyentries.csv"'})


@bp.post("/admin/withdraw")
def admin_withdraw():
    ctx = _ctx()
    check_admin(request.headers, ctx.admin_secret)
    data = json_object(request)
    pid, reason = data.get("participant"), data.get("reason", "withdrawn on request")
    if not isinstance(pid, str) or not pid or set(data) - {"participant", "reason"}:
        return _err(400, "send {\"participant\": public id, \"reason\": text}")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 500:
        return _err(400, "'reason' must be a text of at most 500 characters")
    try:
        n = ctx.store.withdraw(pid, reason.strip())
    except KeyError:
        return _err(404, f"no participant with id {pid[:60]!r}")
    return jsonify({"participant": pid, "answers_removed": n})


# ------------------------------------------------------------------------------------ app
def create_app(study, store: Store, admin_token: str) -> Flask:
    """The Flask app serving ``study`` (a :class:`Study`, or ``{condition: Study}`` of
    :func:`study.serve.design.build_studies`) from ``store``; admin routes need ``admin_token``."""
    if not admin_token:
        raise ValueError("an admin token is required")
    studies = study if isinstance(study, dict) else {None: study}
    app = Flask(__name__, static_folder=str(HERE / "static"), template_folder=str(HERE / "templates"))
    app.config["MAX_CONTENT_LENGTH"] = max(body_limit(s) for s in studies.values())
    app.json.sort_keys = False
    app.extensions[EXTENSION] = StudyContext(studies, store, admin_token.encode("utf-8"))
    app.register_blueprint(bp)
    return app
