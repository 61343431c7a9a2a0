"""What the admin sees: the export CSV (the original app's format) and the progress tables."""
from __future__ import annotations

import io
import json

from ..export import Polygon, media_name_for, write_export
from .design import Study
from .store import Store


def export_data(study: Study, store: Store) -> dict:
    """The stored answers in :func:`study.export.write_export`'s input form.

    Every participant with at least one selection or annotation answer is a row. Images are the
    study's, in configuration order, followed by any image that only earlier answers name (a
    study whose configuration changed keeps every answer). Catch trials are not part of the export.
    """
    selections: dict[str, dict[str, int]] = {img: {} for img in study.selection_images}
    polygons: dict[str, dict[str, list[Polygon]]] = {img: {} for img in study.annotation_images}
    answered: set[str] = set()
    for r in store.all_answers():
        if r["kind"] == "selection":
            selections.setdefault(r["image_id"], {})[r["participant_id"]] = int(r["choice"])
        elif r["kind"] == "annotation":
            polys = [Polygon(tuple((float(x), float(y)) for x, y in pts)) for pts in json.loads(r["polygons"])]
            polygons.setdefault(r["image_id"], {})[r["participant_id"]] = polys
        else:
            continue
        answered.add(r["participant_id"])
    people = [{"id": p.id, "createdAt": p.created_at, "updatedAt": p.updated_at,
               "submittedAt": p.submitted_at or ""}
              for p in store.participants() if p.id in answered]
    return {
        "selections": selections, "polygons": polygons, "participants": people,
        "media_names": {img: study.images[img].media_name if img in study.images else media_name_for(img)
                        for img in polygons},
        "selection_images": list(selections), "annotation_images": list(polygons),
    }


def export_csv(study: Study, store: Store) -> str:
    """The export as CSV text: exactly the columns ``ldvce study eval --export`` reads."""
    d = export_data(study, store)
    buf = io.StringIO()
    write_export(buf, d["selections"], d["polygons"], d["participants"], media_names=d["media_names"],
                 selection_images=d["selection_images"], annotation_images=d["annotation_images"])
    return buf.getvalue()


def progress(study: Study, store: Store) -> dict:
    """Answers per image and per participant (no answer contents, no tokens)."""
    per_image = {img: {"selection": 0, "annotation": 0, "catch": 0} for img in study.images}
    per_participant: dict[str, dict] = {}
    people = store.participants()
    for p in people:
        per_participant[p.id] = {"id": p.id, "created_at": p.created_at, "updated_at": p.updated_at,
                                 "submitted_at": p.submitted_at, "answered": 0, "trials": len(p.plan),
                                 "catch_passed": 0, "catch_total": sum(k.startswith("catch:") for k in p.plan)}
    for r in store.all_answers():
        per_image.setdefault(r["image_id"], {"selection": 0, "annotation": 0, "catch": 0})[r["kind"]] += 1
        e = per_participant.get(r["participant_id"])
        if e is None:
            continue
        e["answered"] += 1
        if r["kind"] == "catch":
            c = study.catch_trials.get(r["trial"])
            if c is not None and int(r["choice"]) == c.expect:
                e["catch_passed"] += 1
    return {
        "participants": len(people),
        "finished": sum(p.submitted_at is not None for p in people),
        "images": per_image,
        "per_participant": list(per_participant.values()),
        "selection_images": study.selection_images,
        "annotation_images": study.annotation_images,
    }
