"""Read and write the user-study export CSV (the study web app's format, described below).

The study web app stores one row per participant. Its columns are the metadata
``id, createdAt, updatedAt, submittedAt``, then one ``ImageSelection/<img>/selection``
column per image of the selection task, then the flattened polygon annotations::

    ImageAnnotations//_next/static/media/<img>_1.0_misclassified.<hash>.png/<poly>/tool
    ImageAnnotations//_next/static/media/<img>_1.0_misclassified.<hash>.png/<poly>/points/<k>/x
    ImageAnnotations//_next/static/media/<img>_1.0_misclassified.<hash>.png/<poly>/points/<k>/y

Polygon vertices are in pixels of the image *as displayed* (512x512 in the study); the
analysis resolution (256 in the seed) is applied later by :mod:`study.hrh`. Empty cells mean
"no such polygon/point for this participant". The flattening is rectangular, so the number of
``<poly>`` and ``<k>`` columns per image is the maximum over all participants.

The study server (``ldvce study serve``) appends ``Study/<name>`` columns after those: the
participant's status, condition, recruitment-panel parameters (``Study/panel/<param>``),
catch-trial score (``Study/catch_passed``, ``Study/catch_total``), per-trial timings
(``Study/trial/<key>/shown``, ``…/answered``, ``…/seconds``) and ``Study/total_seconds``. They are
read into ``StudyExport.info``; an export without them (the original app's) reads as before.

Nothing malformed is dropped silently: every cell, row or column that cannot be used becomes a
:class:`ParseIssue` ``(row, column, value, reason)`` in ``StudyExport.issues`` and the parser
moves on with the rest of the file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterable, Mapping, Sequence

DISPLAY_SIZE = 512
ANALYSIS_SIZE = 256
META_COLUMNS = ("id", "createdAt", "updatedAt", "submittedAt")
SELECTION_PREFIX = "ImageSelection/"
#: Prefix of the study server's extra per-participant columns (see the module docstring).
INFO_PREFIX = "Study/"
ANNOTATION_PREFIX = "ImageAnnotations/"
#: The path the study app (Next.js) serves its images under; kept verbatim in column names.
MEDIA_DIR = "/_next/static/media/"
#: The only drawing tool the real study app records; anything else is reported and skipped.
ADD_TOOL = "Add"

_SELECTION_RE = re.compile(r"^ImageSelection/(?P<img>[^/]+)/selection$")
# The media path may itself contain slashes, so anchor on the fixed tail of the column name.
_ANNOTATION_RE = re.compile(
    r"^ImageAnnotations/(?P<path>.*)/(?P<poly>\d+)/(?:(?P<tool>tool)|points/(?P<k>\d+)/(?P<axis>[xy]))$"
)


class ExportError(ValueError):
    """The export cannot be read at all (missing file, no header). Names the path."""


@dataclass(frozen=True)
class ParseIssue:
    """One malformed entry that the parser skipped (or repaired, as ``reason`` says).

    ``row`` is the 1-based record number as a spreadsheet shows it: the header is row 1, the
    first participant row 2. ``column`` is the column name (or ``""`` for a whole row).
    """

    row: int
    column: str
    value: str
    reason: str

    def as_dict(self) -> dict:
        return {"row": self.row, "column": self.column, "value": self.value, "reason": self.reason}


@dataclass(frozen=True)
class Polygon:
    """A polygon drawn by one participant, vertices ``(x, y)`` in display pixels."""

    points: tuple[tuple[float, float], ...]
    tool: str = ADD_TOOL


@dataclass(frozen=True)
class Participant:
    """Metadata of one export row."""

    id: str
    row: int
    createdAt: str = ""
    updatedAt: str = ""
    submittedAt: str = ""


@dataclass
class StudyExport:
    """A parsed study export.

    Attributes
    ----------
    participants : list of Participant
        In file order.
    selection_images, annotation_images : list of str
        Image ids (e.g. ``"27300"``) in header order. The two tasks need not show the same images.
    selections : dict
        ``selections[img][participant_id] -> int`` choice (-1 = "nobody smiles", else frame
        index). A participant without a (valid) answer is absent.
    polygons : dict
        ``polygons[img][participant_id] -> list[Polygon]`` in polygon-index order; participants
        who drew nothing on ``img`` are absent.
    media_names : dict
        ``media_names[img]`` is the file name in the annotation columns, e.g.
        ``"27300_1.0_misclassified.1ca47a08.png"``, so an export can be written back unchanged.
    issues : list of ParseIssue
        Everything that was skipped or repaired.
    info : dict
        ``info[participant_id][name]`` = the non-empty ``Study/<name>`` cells of the study
        server's export (status, condition, panel parameters, catch score, timings), as text.
    """

    participants: list[Participant] = field(default_factory=list)
    selection_images: list[str] = field(default_factory=list)
    annotation_images: list[str] = field(default_factory=list)
    selections: dict[str, dict[str, int]] = field(default_factory=dict)
    polygons: dict[str, dict[str, list[Polygon]]] = field(default_factory=dict)
    media_names: dict[str, str] = field(default_factory=dict)
    issues: list[ParseIssue] = field(default_factory=list)
    info: dict[str, dict[str, str]] = field(default_factory=dict)
    info_columns: list[str] = field(default_factory=list)
    display_size: int = DISPLAY_SIZE
    analysis_size: int = ANALYSIS_SIZE
    source: str = ""

    @property
    def participant_ids(self) -> list[str]:
        return [p.id for p in self.participants]

    @property
    def images(self) -> list[str]:
        """All image ids of either task, selection images first, in header order."""
        return list(dict.fromkeys(self.selection_images + self.annotation_images))

    def write(self, path) -> None:
        """Write this export back as CSV (see :func:`write_export`)."""
        write_export(
            path,
            selections=self.selections,
            polygons=self.polygons,
            participants=[p.__dict__ for p in self.participants],
            media_names=self.media_names,
            selection_images=self.selection_images,
            annotation_images=self.annotation_images,
            info=self.info,
            info_columns=self.info_columns,
        )


def image_id_from_media(name: str) -> str:
    """Image id of a media file name: ``"27300_1.0_misclassified.1ca47a08.png" -> "27300"``.

    The id is what precedes the first ``_`` (the app names files ``<id>_<target>_<tag>``); a
    name without ``_`` falls back to the part before the first ``.``.
    """
    base = name.rsplit("/", 1)[-1]
    if "_" in base:
        return base.split("_", 1)[0]
    return base.split(".", 1)[0]


def media_name_for(img: str, tag: str = "1.0_misclassified") -> str:
    """The media name the Next.js app would give ``<img>_<tag>.png``: a content-hash-like suffix.

    The real hash is of the file content; here a stable hash of the name stands in for it so
    that written exports are reproducible.
    """
    digest = hashlib.sha1(f"{img}_{tag}".encode()).hexdigest()[:8]
    return f"{img}_{tag}.{digest}.png"


# ----------------------------------------------------------------------------------- reading


def read_export(source, display_size: int = DISPLAY_SIZE, analysis_size: int = ANALYSIS_SIZE) -> StudyExport:
    """Parse a study export CSV.

    Parameters
    ----------
    source : str, os.PathLike or text file object
        The export. A BOM (Excel re-saves) is tolerated.
    display_size : int
        Side length in pixels of the images as participants saw them (polygon coordinates are in
        this frame). 512 in the real study.
    analysis_size : int
        Side length the HRHs are computed at (256 = the CelebA-HQ images). Stored on the result
        so that downstream code scales polygons consistently.

    Returns
    -------
    StudyExport
        With every malformed entry listed in ``issues``.

    Raises
    ------
    ExportError
        If the file does not exist, cannot be read, has no header row, or its header has no
        selection or annotation column (not a study export).
    """
    if hasattr(source, "read"):
        text = source.read()
        name = getattr(source, "name", "<stream>")
    else:
        path = Path(os.fspath(source))
        name = str(path)
        if not path.is_file():
            raise ExportError(f"study export not found: {path} (expected the CSV downloaded from the study app)")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ExportError(f"cannot read study export {path}: {exc}") from exc
    try:
        records = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise ExportError(f"study export {name} is not valid CSV: {exc}") from exc
    if not records or not any(cell.strip() for cell in records[0]):
        raise ExportError(f"study export {name} is empty (no header row)")
    export = _parse_records(records, display_size, analysis_size)
    export.source = name
    if not export.selection_images and not export.annotation_images:
        raise ExportError(f"study export {name} has no selection or annotation column (header: "
                          f"{', '.join(h for h in records[0][:6] if h)[:200]}…); expected the CSV "
                          "downloaded from the study app, comma-separated")
    return export


@dataclass
class _PolyColumns:
    tool: int | None = None
    points: dict[int, dict[str, int]] = field(default_factory=dict)  # k -> {"x": col, "y": col}


@dataclass
class _Columns:
    """Where everything is in the header: column indices by meaning."""

    meta: dict[str, int] = field(default_factory=dict)  # metadata name -> column
    selection: dict[str, int] = field(default_factory=dict)  # image -> column
    annotation: dict[str, dict[int, _PolyColumns]] = field(default_factory=dict)  # image -> poly -> columns
    info: dict[str, int] = field(default_factory=dict)  # Study/<name> -> column


def _parse_records(records: list[list[str]], display_size: int, analysis_size: int) -> StudyExport:
    header = [h.strip() for h in records[0]]
    ex = StudyExport(display_size=display_size, analysis_size=analysis_size)
    cols = _classify_columns(header, ex)
    _report_missing_columns(cols, ex)
    ex.selection_images = list(cols.selection)
    ex.annotation_images = list(cols.annotation)
    ex.selections = {img: {} for img in cols.selection}
    ex.polygons = {img: {} for img in cols.annotation}
    ex.info_columns = list(cols.info)
    used_ids: set[str] = set()
    for r, rec in enumerate(records[1:], start=2):
        if any(cell.strip() for cell in rec):  # a blank line (trailing newline) carries no data: nothing to report
            _parse_row(r, rec, header, cols, ex, used_ids)
    return ex


def _classify_columns(header: list[str], ex: StudyExport) -> _Columns:
    """Classify every header column once; records media names and header issues on ``ex``."""
    issue = ex.issues.append
    cols = _Columns()
    seen: dict[str, int] = {}
    for j, name in enumerate(header):
        if name in seen:
            issue(ParseIssue(1, name, name, f"duplicate column (also column {seen[name] + 1}); this copy ignored"))
            continue
        seen[name] = j
        if name in META_COLUMNS:
            cols.meta[name] = j
            continue
        m = _SELECTION_RE.match(name)
        if m:
            cols.selection[m["img"]] = j
            continue
        if name.startswith(INFO_PREFIX) and len(name) > len(INFO_PREFIX):
            cols.info[name[len(INFO_PREFIX):]] = j
            continue
        m = _ANNOTATION_RE.match(name)
        if m:
            media = m["path"].rsplit("/", 1)[-1]
            img = image_id_from_media(media)
            if ex.media_names.setdefault(img, media) != media:
                issue(ParseIssue(1, name, media, f"image {img} already annotated under media name "
                                                 f"{ex.media_names[img]}; columns merged"))
            pc = cols.annotation.setdefault(img, {}).setdefault(int(m["poly"]), _PolyColumns())
            if m["tool"]:
                pc.tool = j
            else:
                pc.points.setdefault(int(m["k"]), {})[m["axis"]] = j
            continue
        issue(ParseIssue(1, name, name, "unrecognised column; ignored"))
    return cols


def _report_missing_columns(cols: _Columns, ex: StudyExport) -> None:
    """Metadata columns, polygon ``tool`` columns and vertex coordinates the header lacks."""
    issue = ex.issues.append
    for col in META_COLUMNS:
        if col not in cols.meta:
            issue(ParseIssue(1, col, "", "missing column" + ("; participants named by row number" if col == "id" else "")))
    for img, polys in cols.annotation.items():
        for poly, pc in polys.items():
            prefix = f"{ANNOTATION_PREFIX}{MEDIA_DIR}{ex.media_names[img]}/{poly}"
            if pc.tool is None:
                issue(ParseIssue(1, f"{prefix}/tool", "", "missing column; polygons with points assumed tool 'Add'"))
            for k, axes in pc.points.items():
                for axis in "xy":
                    if axis not in axes:
                        issue(ParseIssue(1, f"{prefix}/points/{k}/{axis}", "",
                                         "missing column; vertex skipped wherever the other coordinate is given"))


def _row_cell(rec: list[str], j: int | None) -> str | None:
    """The stripped cell ``j`` of ``rec``, or None when the column is absent or the row was cut before it."""
    if j is None or j >= len(rec):
        return None
    return rec[j].strip()


def _parse_row(r: int, rec: list[str], header: list[str], cols: _Columns, ex: StudyExport,
               used_ids: set[str]) -> None:
    """One participant row (``r`` = 1-based record number) into ``ex``."""
    issue = ex.issues.append
    _report_row_length(r, rec, header, issue)
    cell = partial(_row_cell, rec)
    pid = _participant_id(r, cell(cols.meta.get("id")) or "", "id" in cols.meta, used_ids, issue)
    ex.participants.append(Participant(pid, r, *(cell(cols.meta.get(c)) or "" for c in META_COLUMNS[1:])))
    info = {name: v for name, j in cols.info.items() if (v := cell(j))}
    if info:
        ex.info[pid] = info
    for img, j in cols.selection.items():
        v = cell(j)
        if not v:
            continue  # no answer (or truncated: already reported for the row)
        choice = _parse_choice(v)
        if isinstance(choice, str):
            issue(ParseIssue(r, header[j], v, choice))
        else:
            ex.selections[img][pid] = choice
    for img, polys in cols.annotation.items():
        drawn = []
        for poly in sorted(polys):
            p = _parse_polygon(r, rec, header, polys[poly], cell, issue, ex.display_size)
            if p is not None:
                drawn.append(p)
        if drawn:
            ex.polygons[img][pid] = drawn


def _report_row_length(r: int, rec: list[str], header: list[str], issue) -> None:
    """Note a row shorter (truncated) or longer than the header."""
    n, ncol = len(rec), len(header)
    if n < ncol:
        issue(ParseIssue(r, header[n], "", f"truncated row: {n} of {ncol} fields; "
                                           f"entries from column {n + 1} on are missing"))
    elif n > ncol:
        issue(ParseIssue(r, "", ",".join(rec[ncol:])[:80], f"row has {n} fields, header {ncol}; extra fields ignored"))


def _participant_id(r: int, pid: str, has_id_column: bool, used_ids: set[str], issue) -> str:
    """The row's participant id, made non-empty and unique (and noted where it had to be)."""
    if not pid:
        if has_id_column:
            issue(ParseIssue(r, "id", "", f"empty participant id; named 'row{r}'"))
        pid = f"row{r}"
    if pid in used_ids:
        new = f"{pid}#row{r}"
        issue(ParseIssue(r, "id", pid, f"duplicate participant id; this row kept as '{new}'"))
        pid = new
    used_ids.add(pid)
    return pid


def _parse_choice(v: str) -> int | str:
    """An int choice >= -1, or the reason why ``v`` is not one."""
    try:
        f = float(v)
    except ValueError:
        return "selection is not a number; skipped"
    if not math.isfinite(f) or f != int(f):
        return "selection is not an integer frame index; skipped"
    if f < -1:
        return "selection below -1; skipped"
    return int(f)


def _parse_coord(v: str) -> float | None:
    try:
        f = float(v)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def _parse_polygon(r, rec, header, pc: _PolyColumns, cell, issue, size: int) -> Polygon | None:
    """One polygon of one row (vertices on the ``size``² display canvas), or None when the row
    has none there. Reports what it skips."""
    ks = sorted(pc.points)
    last_col = max([pc.tool or 0] + [j for axes in pc.points.values() for j in axes.values()])
    cut = last_col >= len(rec)
    tool = cell(pc.tool)
    pts: list[tuple[float, float]] = []
    any_value = bool(tool)
    for k in ks:
        axes = pc.points[k]
        xs, ys = cell(axes.get("x")), cell(axes.get("y"))
        if not xs and not ys:
            continue
        any_value = True
        if not xs or not ys:
            if cut and (xs is None or ys is None):
                continue  # lost to the truncation, reported with the polygon below
            have, miss = ("x", "y") if xs else ("y", "x")
            col = axes.get(miss)
            name = header[col] if col is not None else header[axes[have]].rsplit("/", 1)[0] + f"/{miss}"
            issue(ParseIssue(r, name, "", f"vertex {k} has {have} but no {miss}; vertex skipped"))
            continue
        x, y = _parse_coord(xs), _parse_coord(ys)
        for val, raw, axis in ((x, xs, "x"), (y, ys, "y")):
            if val is None:
                issue(ParseIssue(r, header[axes[axis]], raw, f"coordinate is not a finite number; vertex {k} skipped"))
        outside = [f"{a}={v:g}" for a, v in (("x", x), ("y", y))
                   if v is not None and not 0 <= v <= size]
        if outside:
            issue(ParseIssue(r, header[axes["x"]], ", ".join(outside),
                             f"vertex {k} lies outside the {size}×{size} display canvas; vertex skipped"))
        elif x is not None and y is not None:
            pts.append((x, y))
    if not any_value:
        return None
    some_col = header[pc.tool] if pc.tool is not None else header[next(iter(pc.points[ks[0]].values()))]
    if cut:
        # A polygon whose columns run past the end of a truncated row may have lost vertices:
        # its shape is unknown, so it is skipped rather than drawn wrong.
        issue(ParseIssue(r, some_col, tool or "", "polygon cut by the truncated row; skipped"))
        return None
    if tool is None or tool == "":
        if not pts:
            return None
        issue(ParseIssue(r, some_col, "", "polygon has points but no tool; assumed 'Add'"))
        tool = ADD_TOOL
    elif tool != ADD_TOOL:
        issue(ParseIssue(r, some_col, tool, f"unknown tool (only '{ADD_TOOL}' is defined); polygon skipped"))
        return None
    if len(pts) < 3:
        # Kept (a faithful round trip needs it, and the seed rule draws it): it encloses no area.
        issue(ParseIssue(r, some_col, tool, f"degenerate polygon with {len(pts)} vertices encloses no area "
                                            "(raster 'seed' draws its outline, as the original did; "
                                            "'enclosed' and 'centre' skip it)"))
    return Polygon(tuple(pts), tool)


# ----------------------------------------------------------------------------------- writing


def _fmt(v: float) -> str:
    """Numbers as the app writes them: integral values without a decimal point, floats exactly."""
    f = float(v)
    return str(int(f)) if f.is_integer() else repr(f)


def write_export(
    path,
    selections: Mapping[str, Mapping[str, int]] | None = None,
    polygons: Mapping[str, Mapping[str, Sequence]] | None = None,
    participants: Iterable | None = None,
    *,
    media_names: Mapping[str, str] | None = None,
    selection_images: Sequence[str] | None = None,
    annotation_images: Sequence[str] | None = None,
    info: Mapping[str, Mapping[str, object]] | None = None,
    info_columns: Sequence[str] | None = None,
) -> list[str]:
    """Write a study export CSV in the real app's format from in-memory data.

    Parameters
    ----------
    path : str, os.PathLike or text file object
        Destination.
    selections : mapping
        ``{img: {participant_id: choice}}``; a missing participant gives an empty cell.
    polygons : mapping
        ``{img: {participant_id: [polygon, ...]}}`` where a polygon is a :class:`Polygon` or a
        sequence of ``(x, y)`` vertices in display pixels.
    participants : iterable, optional
        Participant ids, or dicts with ``id`` and optionally ``createdAt``, ``updatedAt``,
        ``submittedAt``. Defaults to every id found in ``selections``/``polygons``, in order
        of appearance. Missing timestamp keys are filled with fixed, plausible ISO times; a
        key given as ``""`` or None stays empty (e.g. ``submittedAt`` of a participant who has
        not finished).
    media_names : mapping, optional
        ``{img: "<img>_1.0_misclassified.<hash>.png"}``; defaults to :func:`media_name_for`.
    selection_images, annotation_images : sequence of str, optional
        Column order of the two tasks; default: the mappings' key order.
    info : mapping, optional
        ``{participant_id: {name: value}}``: written as ``Study/<name>`` columns after the
        annotation columns (the study server's extras); None values give empty cells.
    info_columns : sequence of str, optional
        Order of those names; default: first appearance in ``info``.

    Returns
    -------
    list of str
        The header that was written.

    Notes
    -----
    Column order follows the real export: metadata, selection columns, then per image, per
    polygon index ``tool`` followed by ``points/<k>/x`` and ``points/<k>/y`` for every k. Each
    image gets as many polygon columns as its most prolific participant drew, and each polygon
    index as many point columns as its longest polygon had.
    """
    selections = dict(selections or {})
    polygons = dict(polygons or {})
    sel_imgs = list(selection_images) if selection_images is not None else list(selections)
    ann_imgs = list(annotation_images) if annotation_images is not None else list(polygons)
    media = {img: (media_names or {}).get(img) or media_name_for(img) for img in ann_imgs}
    people = _people_with_timestamps(participants, selections, polygons)

    ann_header, layout = _annotation_layout(ann_imgs, polygons, media)
    info = dict(info or {})
    names = list(info_columns) if info_columns is not None else list(
        dict.fromkeys(k for d in info.values() for k in d))
    header = (list(META_COLUMNS) + [f"{SELECTION_PREFIX}{img}/selection" for img in sel_imgs] + ann_header
              + [INFO_PREFIX + n for n in names])
    rows = [_export_row(d, sel_imgs, selections, layout, polygons)
            + ["" if info.get(d["id"], {}).get(n) is None else str(info[d["id"]][n]) for n in names]
            for d in people]

    if hasattr(path, "write"):
        _write_rows(path, header, rows)
    else:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            _write_rows(fh, header, rows)
    return header


def _people_with_timestamps(participants: Iterable | None, selections: Mapping, polygons: Mapping) -> list[dict]:
    """Participant dicts with every metadata key (see :func:`write_export`'s ``participants``)."""
    if participants is None:
        ids = []
        for table in list(selections.values()) + list(polygons.values()):
            ids.extend(table)
        participants = list(dict.fromkeys(ids))
    people = []
    for i, p in enumerate(participants):
        d = dict(p) if isinstance(p, Mapping) else {"id": str(p)}
        stamp = f"2024-06-20T{12 + i // 60 % 12:02d}:{i % 60:02d}:00.000Z"
        for key in META_COLUMNS[1:]:
            d[key] = (d[key] or "") if key in d else stamp
        people.append(d)
    return people


def _tool_and_points(poly) -> tuple[str, list]:
    """A :class:`Polygon` or a plain vertex sequence (tool 'Add') as ``(tool, points)``."""
    if isinstance(poly, Polygon):
        return poly.tool, list(poly.points)
    return ADD_TOOL, list(poly)


def _annotation_layout(ann_imgs: Sequence[str], polygons: Mapping, media: Mapping[str, str]):
    """The annotation columns and their layout ``[(img, polygon index, number of points)]``."""
    header, layout = [], []
    for img in ann_imgs:
        per = polygons.get(img, {})
        n_poly = max((len(v) for v in per.values()), default=0)
        for q in range(n_poly):
            n_pts = max((len(_tool_and_points(v[q])[1]) for v in per.values() if q < len(v)), default=0)
            layout.append((img, q, n_pts))
            base = f"{ANNOTATION_PREFIX}{MEDIA_DIR}{media[img]}/{q}"
            header.append(f"{base}/tool")
            for k in range(n_pts):
                header += [f"{base}/points/{k}/x", f"{base}/points/{k}/y"]
    return header, layout


def _export_row(d: dict, sel_imgs: Sequence[str], selections: Mapping, layout, polygons: Mapping) -> list[str]:
    """One participant's row: metadata, selections, then every polygon slot of ``layout``."""
    pid = d["id"]
    row = [d.get(c, "") for c in META_COLUMNS]
    for img in sel_imgs:
        v = selections.get(img, {}).get(pid)
        row.append("" if v is None else str(int(v)))
    for img, q, n_pts in layout:
        mine = polygons.get(img, {}).get(pid, [])
        if q < len(mine):
            tool, pts = _tool_and_points(mine[q])
            row.append(tool)
            for x, y in pts:
                row += [_fmt(x), _fmt(y)]
            row += [""] * (2 * (n_pts - len(pts)))
        else:
            row += [""] * (1 + 2 * n_pts)
    return row


def _write_rows(fh, header, rows) -> None:
    w = csv.writer(fh, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
