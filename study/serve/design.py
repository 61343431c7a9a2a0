"""What a study shows: its configuration (YAML) and the trials built from generation runs.

A study is made from one or more ``ldvce generate`` run folders. Each finished item of a run is
one *study image*: the selection task shows (a subset of) its counterfactual frame sequence, the
annotation task shows its original. Without a configuration file the defaults reproduce the
original study: every image, every frame, the selection task first and then the polygon task,
images at 512 px, a per-participant random order.

Configuration keys (all optional)::

    title: "Smile study"
    question: "Is this person smiling?"          # the attribute wording, shown on every task
    selection_instructions: "..."                # what to do in the selection task
    annotation_instructions: "..."               # what to do in the polygon task
    images: ["27300", "27398"]                   # which images (default: every finished item)
    annotation_images: ["27300"]                 # polygon task on a subset (default: `images`)
    tasks: [selection, annotation]               # which tasks, in this order
    frames: 8                                    # frames per sequence, chosen evenly (default all)
    display_size: 512                            # annotation image side, px (polygon frame)
    frame_size: 192                              # side of each frame in the selection grid, px
    randomize: true                              # per-participant shuffled image order
    seed: 0                                      # seed of that shuffle
    consent: "I agree that ..."                  # a consent text to accept before starting
    thank_you: "Thank you!"
    max_polygons: 10                             # per image
    max_points: 100                              # per polygon
    max_participants: null                       # refuse new participants beyond this
    catch_trials:                                # attention checks (not in the export)
      - {image: "27300", frames: [0, 0, 0, 0], expect: -1}

A catch trial is a selection trial whose frames are given as indices into the image's full
sequence (repeats allowed) and whose correct answer ``expect`` is a *position* among the shown
frames (0-based) or -1 for "none". Its answers are kept apart from the export and reported on the
admin page.

Run folders are read only through :mod:`dvce.runfolder` (no torch).
"""
from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from dvce import runfolder

from ..export import DISPLAY_SIZE, media_name_for

TASKS = ("selection", "annotation")
NONE_CHOICE = -1

#: Image ids become URL path segments and export column names. The export names media files
#: ``<id>_1.0_misclassified.<hash>.png`` and reads the id back as the part before the first ``_``,
#: so an id must not contain ``_`` (nor ``/``).
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]*$")

DEFAULTS: dict[str, Any] = {
    "title": "Counterfactual explanation study",
    "question": "Is this person smiling?",
    "selection_instructions": (
        "The images below change step by step from left to right. Click the FIRST image in which "
        "the answer to the question is clearly yes, or choose 'None of them'. Then press Submit."),
    "annotation_instructions": (
        "Draw where you see the evidence for your answer: click (or tap) to add corners of a shape, "
        "close it by clicking its first corner or 'Close shape'. You can draw several shapes. "
        "Then press Submit."),
    "images": None,
    "annotation_images": None,
    "tasks": list(TASKS),
    "frames": None,
    "display_size": DISPLAY_SIZE,
    "frame_size": 192,
    "randomize": True,
    "seed": 0,
    "consent": None,
    "thank_you": "Thank you! Your answers are saved. You can close this page.",
    "max_polygons": 10,
    "max_points": 100,
    "max_participants": None,
    "catch_trials": [],
}


class StudyConfigError(ValueError):
    """The study cannot be built: a bad configuration value or an unusable run folder."""


@dataclass(frozen=True)
class StudyImage:
    """One image of the study.

    ``frames`` are the shown frames as ``(full index, path)`` in sequence order; the full index
    (0 original, 1 reconstruction, 2.. steps) is what the export stores.
    """

    image_id: str
    run_dir: Path
    original: Path
    frames: tuple[tuple[int, Path], ...]
    n_frames: int
    switch_frame: int | None
    media_name: str
    all_frames: tuple[Path, ...] = ()

    @property
    def shown_indices(self) -> tuple[int, ...]:
        return tuple(k for k, _ in self.frames)

    def frame_path(self, index: int) -> Path | None:
        """Path of full-sequence frame ``index`` if it is shown, else None."""
        for k, p in self.frames:
            if k == index:
                return p
        return None


@dataclass(frozen=True)
class CatchTrial:
    """An attention check: ``frames`` (full indices of ``image_id``, repeats allowed), answer ``expect``."""

    key: str
    image_id: str
    frames: tuple[int, ...]
    expect: int


@dataclass
class Study:
    """Everything the server needs to show and validate trials."""

    config: dict
    images: dict[str, StudyImage]
    selection_images: list[str]
    annotation_images: list[str]
    catch_trials: dict[str, CatchTrial] = field(default_factory=dict)

    @property
    def display_size(self) -> int:
        return int(self.config["display_size"])

    def frame_file(self, image_id: str, index: int) -> Path | None:
        """The file of frame ``index`` of ``image_id`` if some trial shows it, else None."""
        im = self.images.get(image_id)
        if im is None:
            return None
        p = im.frame_path(index)
        if p is None and any(c.image_id == image_id and index in c.frames for c in self.catch_trials.values()):
            p = im.all_frames[index]
        return p

    def fingerprint(self) -> str:
        """A short hash of what the trials are; stored in the database to notice a changed study."""
        parts = [str(self.display_size)]
        for img in self.selection_images:
            parts.append(f"s:{img}:{','.join(map(str, self.images[img].shown_indices))}")
        parts += [f"a:{img}" for img in self.annotation_images]
        parts += [f"c:{c.key}:{c.image_id}:{c.frames}:{c.expect}" for c in self.catch_trials.values()]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def plan(self, seed_key: str) -> list[str]:
        """The trial keys of one participant, in order: ``sel:<img>``, ``catch:<k>``, ``ann:<img>``.

        The image order is shuffled per participant (seeded by the study seed and ``seed_key``)
        when ``randomize`` is on; catch trials are put at seeded random places of the selection block.
        """
        rng = random.Random(f"{self.config['seed']}:{seed_key}")
        plan: list[str] = []
        for task in self.config["tasks"]:
            imgs = list(self.selection_images if task == "selection" else self.annotation_images)
            if self.config["randomize"]:
                rng.shuffle(imgs)
            block = [("sel:" if task == "selection" else "ann:") + img for img in imgs]
            if task == "selection":
                for key in self.catch_trials:
                    block.insert(rng.randint(0, len(block)), key)
            plan += block
        return plan


# ------------------------------------------------------------------------------------ config
def load_config(path=None) -> dict:
    """The study configuration: :data:`DEFAULTS` updated from the YAML file at ``path``.

    Raises
    ------
    StudyConfigError
        When the file is missing, is not a YAML mapping, or has an unknown key or a bad value
        (the message names the file and the key).
    """
    cfg = dict(DEFAULTS)
    cfg["tasks"] = list(DEFAULTS["tasks"])
    if path is None:
        return validate_config(cfg, "defaults")
    p = Path(path)
    if not p.is_file():
        raise StudyConfigError(f"study config not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise StudyConfigError(f"{p}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise StudyConfigError(f"{p}: expected a mapping of keys (title, question, images, …), got {type(data).__name__}")
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise StudyConfigError(f"{p}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(DEFAULTS)}")
    cfg.update(data)
    return validate_config(cfg, str(p))


def _int(cfg, key, where, lo, hi=None, optional=False):
    v = cfg[key]
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise StudyConfigError(f"{where}: '{key}' must be an integer {rng}, got {v!r}")


def validate_config(cfg: dict, where: str = "config") -> dict:
    """Check types and ranges of a configuration; returns it (ids as strings)."""
    for key in ("title", "question", "selection_instructions", "annotation_instructions", "thank_you"):
        if not isinstance(cfg[key], str) or not cfg[key].strip():
            raise StudyConfigError(f"{where}: '{key}' must be a non-empty text")
    if cfg["consent"] is not None and (not isinstance(cfg["consent"], str) or not cfg["consent"].strip()):
        raise StudyConfigError(f"{where}: 'consent' must be a text (or left out)")
    for key in ("images", "annotation_images"):
        v = cfg[key]
        if v is not None:
            if not isinstance(v, list) or not v:
                raise StudyConfigError(f"{where}: '{key}' must be a non-empty list of image ids")
            cfg[key] = [str(x) for x in v]
            if len(set(cfg[key])) != len(cfg[key]):
                raise StudyConfigError(f"{where}: '{key}' lists an image twice")
    tasks = cfg["tasks"]
    if (not isinstance(tasks, list) or not tasks or any(t not in TASKS for t in tasks)
            or len(set(tasks)) != len(tasks)):
        raise StudyConfigError(f"{where}: 'tasks' must list 'selection' and/or 'annotation' once each, got {tasks!r}")
    _int(cfg, "frames", where, 2, optional=True)
    _int(cfg, "display_size", where, 64, 4096)
    _int(cfg, "frame_size", where, 32, 1024)
    _int(cfg, "seed", where, 0)
    _int(cfg, "max_polygons", where, 1, 100)
    _int(cfg, "max_points", where, 3, 1000)
    _int(cfg, "max_participants", where, 1, optional=True)
    if not isinstance(cfg["randomize"], bool):
        raise StudyConfigError(f"{where}: 'randomize' must be true or false")
    catch = cfg["catch_trials"] or []
    if not isinstance(catch, list):
        raise StudyConfigError(f"{where}: 'catch_trials' must be a list")
    for i, c in enumerate(catch):
        if (not isinstance(c, dict) or set(c) != {"image", "frames", "expect"}
                or not isinstance(c["frames"], list) or len(c["frames"]) < 2
                or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in c["frames"])
                or isinstance(c["expect"], bool) or not isinstance(c["expect"], int)
                or not -1 <= c["expect"] < len(c["frames"])):
            raise StudyConfigError(
                f"{where}: catch_trials[{i}] must be {{image: ID, frames: [frame indices, >= 2], "
                f"expect: position among the shown frames or -1}}, got {c!r}")
    cfg["catch_trials"] = catch
    return cfg


# ------------------------------------------------------------------------------------ frames
def pick_frames(n_frames: int, k: int | None, switch_frame: int | None = None) -> list[int]:
    """``k`` frame indices out of ``n_frames``, evenly spaced, always containing ``switch_frame``.

    With ``k`` None or ``k >= n_frames`` every frame is shown. Otherwise the indices are
    ``round(linspace(0, n-1, k))`` (so the original and the last step are kept), and if the
    classifier's switch frame is not among them it replaces the nearest inner frame (with
    ``k == 2``, the last frame: the original stays as the reference).
    """
    if n_frames <= 0:
        return []
    if k is None or k >= n_frames:
        return list(range(n_frames))
    if k < 2:
        raise ValueError("at least 2 frames must be shown")
    step = (n_frames - 1) / (k - 1)
    # floor(x + 0.5): with step >= 1 the rounded values are distinct.
    idx = [int(math.floor(i * step + 0.5)) for i in range(k)]
    if switch_frame is not None and 0 <= switch_frame < n_frames and switch_frame not in idx:
        # Replace the nearest inner frame: the original and the final counterfactual stay as anchors.
        inner = range(1, k - 1) if k > 2 else [k - 1]
        j = min(inner, key=lambda i: (abs(idx[i] - switch_frame), i))
        idx[j] = switch_frame
        idx.sort()
    return idx


# ------------------------------------------------------------------------------------ build
def _finished_items(run_dirs: Sequence) -> tuple[dict[str, runfolder.RunItem], dict[str, Path]]:
    """``{image id: finished item}`` over ``run_dirs`` and ``{image id: its run folder}``.

    Raises :class:`StudyConfigError` for no run folder, a missing one, one without finished
    items, or an image id found in two runs.
    """
    found: dict[str, runfolder.RunItem] = {}
    where: dict[str, Path] = {}
    if not run_dirs:
        raise StudyConfigError("no run folder given (pass one or more `ldvce generate` output folders)")
    for rd in run_dirs:
        rd = Path(rd)
        if not rd.is_dir():
            raise StudyConfigError(f"run folder not found: {rd}")
        items = runfolder.list_items(rd)
        if not items:
            raise StudyConfigError(f"{rd}: no finished items (no <image_id>/result.json); is it an `ldvce generate` output folder?")
        for it in items:
            if it.image_id in found:
                raise StudyConfigError(
                    f"image id {it.image_id!r} is in both {where[it.image_id]} and {rd}; the export names "
                    f"images by id, so each id may come from one run only")
            found[it.image_id] = it
            where[it.image_id] = rd
    return found, where


def build_study(run_dirs: Sequence, config: dict | None = None) -> Study:
    """The study over the finished items of ``run_dirs``.

    Parameters
    ----------
    run_dirs : sequence of path
        ``ldvce generate`` output folders.
    config : dict, optional
        From :func:`load_config`; the defaults when None.

    Raises
    ------
    StudyConfigError
        A run folder without finished items, an image id found in two runs, an id the export
        format cannot carry, an image named in the config that no run has, or an image without
        frames.
    """
    cfg = config if config is not None else load_config(None)
    found, where = _finished_items(run_dirs)
    wanted = cfg["images"] if cfg["images"] is not None else list(found)
    missing = [i for i in wanted if i not in found]
    if missing:
        raise StudyConfigError(f"image(s) {', '.join(missing)} named in the config are in none of the runs "
                               f"({', '.join(map(str, run_dirs))}); available: {', '.join(list(found)[:20])}")
    ann = cfg["annotation_images"] if cfg["annotation_images"] is not None else list(wanted)
    extra = [i for i in ann if i not in wanted]
    if extra:
        raise StudyConfigError(f"annotation_images {', '.join(extra)} are not in 'images'")

    images: dict[str, StudyImage] = {}
    for img in wanted:
        if not _ID_RE.match(img):
            raise StudyConfigError(
                f"image id {img!r} (in {where[img]}) cannot be used: the export's media names "
                f"'<id>_1.0_misclassified.<hash>.png' need ids of letters, digits, '.' and '-' only")
        it = found[img]
        paths = it.frame_paths()
        if len(paths) < 2:
            raise StudyConfigError(f"{it.folder}: the sequence has {len(paths)} frame(s); the selection task needs at least 2")
        if not it.original.is_file():
            raise StudyConfigError(f"{it.folder}: {it.original.name} is missing")
        sf = it.switch_frame
        shown = pick_frames(len(paths), cfg["frames"], sf)
        images[img] = StudyImage(img, where[img], it.original, tuple((k, paths[k]) for k in shown),
                                 len(paths), sf, media_name_for(img), tuple(paths))

    catch: dict[str, CatchTrial] = {}
    for i, c in enumerate(cfg["catch_trials"]):
        img = str(c["image"])
        if img not in found:
            raise StudyConfigError(f"catch_trials[{i}]: image {img!r} is in none of the runs")
        n = len(found[img].frame_paths())
        bad = [k for k in c["frames"] if k >= n]
        if bad:
            raise StudyConfigError(f"catch_trials[{i}]: frame(s) {bad} out of range; image {img} has {n} frames")
        if img not in images:
            raise StudyConfigError(f"catch_trials[{i}]: image {img!r} must also be a study image (listed in 'images')")
        catch[f"catch:{i}"] = CatchTrial(f"catch:{i}", img, tuple(int(k) for k in c["frames"]), int(c["expect"]))

    sel = list(wanted) if "selection" in cfg["tasks"] else []
    ann = list(ann) if "annotation" in cfg["tasks"] else []
    return Study(cfg, images, sel, ann, catch)
