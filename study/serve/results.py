"""What the admin sees: the export CSV (the original app's format) and the progress tables."""
from __future__ import annotations

import io
import json
from datetime import datetime

from ..export import Polygon, media_name_for, write_export
from .store import ParticipantRow, Store


def _as_studies(study) -> dict:
    """``{condition: Study}`` of a :class:`Study` or of such a mapping."""
    return study if isinstance(study, dict) else {None: study}


def export_data(study, store: Store) -> dict:
    """The stored answers in :func:`study.export.write_export`'s input form.

    ``study`` is a :class:`Study` or ``{condition: Study}``; with conditions the images of all of
    them are columns (the ``Study/condition`` column says whose answers a row holds).

    Every participant with at least one selection or annotation answer is a row (a withdrawn
    participant has none left). Images are the study's, in configuration order, followed by any
    image that only earlier answers name (a study whose configuration changed keeps every
    answer). Catch-trial answers are not image answers; their score, the participant's status,
    condition, panel parameters and timings are the ``info`` (``Study/…`` columns).
    """
    studies = _as_studies(study)
    selections: dict[str, dict[str, int]] = {img: {} for s in studies.values() for img in s.selection_images}
    polygons: dict[str, dict[str, list[Polygon]]] = {img: {} for s in studies.values() for img in s.annotation_images}
    answered: set[str] = set()
    rows = store.all_answers()
    for r in rows:
        if r["kind"] == "selection":
            selections.setdefault(r["image_id"], {})[r["participant_id"]] = int(r["choice"])
        elif r["kind"] == "annotation":
            polys = [Polygon(tuple((float(x), float(y)) for x, y in pts)) for pts in json.loads(r["polygons"])]
            polygons.setdefault(r["image_id"], {})[r["participant_id"]] = polys
        else:
            continue
        answered.add(r["participant_id"])
    kept = [p for p in store.participants() if p.id in answered and not p.withdrawn_at]
    people = [{"id": p.id, "createdAt": p.created_at, "updatedAt": p.updated_at,
               "submittedAt": p.submitted_at or ""} for p in kept]
    info = participant_info(studies, kept, rows, store.shown_times())
    answers = store.questionnaires()
    questions = next(iter(studies.values())).config["questionnaire"]  # the conditions share the config
    for pid, d in info.items():
        for item in questions:
            d[f"q/{item['name']}"] = spreadsheet_safe(answers.get(pid, {}).get(item["name"]))
    media = {img: s.images[img].media_name for s in reversed(list(studies.values())) for img in s.images}
    return {
        "info": info, "info_columns": list(dict.fromkeys(k for d in info.values() for k in d)),
        "selections": selections, "polygons": polygons, "participants": people,
        "media_names": {img: media.get(img) or media_name_for(img) for img in polygons},
        "selection_images": list(selections), "annotation_images": list(polygons),
    }


def export_csv(study, store: Store) -> str:
    """The export as CSV text: exactly the columns ``ldvce study eval --export`` reads."""
    d = export_data(study, store)
    buf = io.StringIO()
    write_export(buf, d["selections"], d["polygons"], d["participants"], media_names=d["media_names"],
                 selection_images=d["selection_images"], annotation_images=d["annotation_images"],
                 info=d["info"], info_columns=d["info_columns"])
    return buf.getvalue()


def spreadsheet_safe(v):
    """A participant's free text as a CSV cell that a spreadsheet shows as text: a leading
    ``=``, ``+``, ``-`` or ``@`` would make Excel or LibreOffice run it as a formula (CSV
    injection), so such a text gets a leading apostrophe; numbers and None pass unchanged."""
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@"):
        return "'" + v
    return v


def _seconds(start: str | None, end: str | None) -> float | None:
    """Seconds from ``start`` to ``end`` (the store's ISO times), or None when one is unknown."""
    if not start or not end:
        return None
    t0, t1 = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (start, end))
    return round((t1 - t0).total_seconds(), 3)


def participant_status(p: ParticipantRow) -> str:
    """``withdrawn``, ``screened_out``, ``finished`` or ``running``."""
    return ("withdrawn" if p.withdrawn_at else "screened_out" if p.screened_out_at
            else "finished" if p.submitted_at else "running")


def participant_info(studies: dict, people: list[ParticipantRow], rows, shown: dict) -> dict[str, dict]:
    """The ``Study/…`` export columns of each participant: status, condition, panel parameters,
    catch-trial score and, per answered trial in plan order, when it was first shown, when it was
    answered and the seconds between; ``total_seconds`` spans first showing to last answer."""
    first = next(iter(studies.values()))
    by_person: dict[str, dict[str, object]] = {p.id: {} for p in people}
    for r in rows:
        if r["participant_id"] in by_person:
            by_person[r["participant_id"]][r["trial"]] = r
    out = {}
    for p in people:
        mine = by_person[p.id]
        study = studies.get(p.condition) or first
        d: dict[str, object] = {"status": participant_status(p)}
        if p.condition is not None:
            d["condition"] = p.condition
        for name in study.config["panel_params"]:
            d[f"panel/{name}"] = p.panel.get(name)
        catch = [k for k in p.plan if k.startswith("catch:")]
        if catch:
            d["catch_passed"] = sum(1 for k in catch if k in mine and k in study.catch_trials
                                    and mine[k]["choice"] == study.catch_trials[k].expect)
            d["catch_total"] = len(catch)
            d["catch_answered"] = sum(k in mine for k in catch)
        firsts, lasts = [], []
        for k in p.plan:
            if k not in mine:
                continue
            t_shown = mine[k]["shown_at"] or shown.get((p.id, k))
            d[f"trial/{k}/shown"] = t_shown
            d[f"trial/{k}/answered"] = mine[k]["answered_at"]
            d[f"trial/{k}/seconds"] = _seconds(t_shown, mine[k]["answered_at"])
            firsts.append(t_shown or mine[k]["answered_at"])
            lasts.append(mine[k]["answered_at"])
        d["total_seconds"] = _seconds(min(firsts), max(lasts)) if firsts else None
        out[p.id] = d
    return out


def progress(study, store: Store) -> dict:
    """Answers per image and per participant (no answer contents, no tokens); ``study`` is a
    :class:`Study` or ``{condition: Study}``."""
    studies = _as_studies(study)
    first = next(iter(studies.values()))
    per_image = {img: {"selection": 0, "annotation": 0, "catch": 0} for s in studies.values() for img in s.images}
    per_participant: dict[str, dict] = {}
    people = store.participants()
    for p in people:
        per_participant[p.id] = {"id": p.id, "created_at": p.created_at, "updated_at": p.updated_at,
                                 "submitted_at": p.submitted_at, "status": participant_status(p),
                                 "condition": p.condition, "panel": p.panel, "answered": 0, "trials": len(p.plan),
                                 "catch_passed": 0, "catch_total": sum(k.startswith("catch:") for k in p.plan)}
    for r in store.all_answers():
        per_image.setdefault(r["image_id"], {"selection": 0, "annotation": 0, "catch": 0})[r["kind"]] += 1
        e = per_participant.get(r["participant_id"])
        if e is None:
            continue
        e["answered"] += 1
        if r["kind"] == "catch":
            c = (studies.get(e["condition"]) or first).catch_trials.get(r["trial"])
            if c is not None and int(r["choice"]) == c.expect:
                e["catch_passed"] += 1
    return {
        "participants": len(people),
        "finished": sum(p.submitted_at is not None for p in people),
        "withdrawals": store.withdrawals(),
        "images": per_image,
        "per_participant": list(per_participant.values()),
        "conditions": {name: store.condition_counts().get(name, 0) for name in studies if name is not None},
        "selection_images": list(dict.fromkeys(i for s in studies.values() for i in s.selection_images)),
        "annotation_images": list(dict.fromkeys(i for s in studies.values() for i in s.annotation_images)),
    }
