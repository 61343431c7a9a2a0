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
    counterfactuals: all                         # `--num-cfs` runs: every counterfactual of an image is a
                                                 # selection image "<id>.cf<r>" (default: first, rank 1 only)
    display_size: 512                            # annotation image side, px (polygon frame)
    frame_size: 192                              # side of each frame in the selection grid, px
    randomize: true                              # per-participant shuffled image order
    block_order: fixed                           # task blocks as in `tasks`, or `random` per participant
    catch_placement: random                      # catch trials in the selection block: random|start|end|spread
    seed: 0                                      # seed of that shuffle
    consent: "I agree that ..."                  # a consent text to accept before starting
    thank_you: "Thank you!"
    max_polygons: 10                             # per image
    max_points: 100                              # per polygon
    max_participants: null                       # refuse new participants beyond this
    catch_trials:                                # attention checks (scored in the export's Study/ columns)
      - {image: "27300", frames: [0, 0, 0, 0], expect: -1}
    panel_params: [PROLIFIC_PID, STUDY_ID, SESSION_ID]  # link parameters stored with the participant
    panel_id_param: PROLIFIC_PID                 # the one naming the person: returning resumes
    completion: {code: "C1AB2CD", url: "https://app.prolific.com/submissions/complete?cc=C1AB2CD", redirect: true}
    screened_out: {code: "SCREEN1", url: "https://app.prolific.com/submissions/complete?cc=SCREEN1"}
    max_failed_catch: 0                          # screen out after more failed catch trials than this
    language: en                                 # the pages' language (HTML lang)
    texts: {start: "Studie starten", submit: "Absenden"}   # any of DEFAULT_TEXTS, to translate the pages
    questionnaire:                               # optional questions after the last trial
      - {name: age, type: number, label: "Your age", min: 18, max: 99}
      - {name: gender, type: choice, label: "Gender", options: [female, male, diverse, "prefer not to say"]}
      - {name: feedback, type: text, label: "Anything to tell us?", max_length: 1000}
    conditions:                                  # between-subject conditions, balanced assignment
      - {name: guided, runs: [runs/guided]}      # run folders relative to the current folder, like
      - {name: plain, runs: [runs/plain]}        # RUN_DIR arguments (which are then left out)

A catch trial is a selection trial whose frames are given as indices into the image's full
sequence (repeats allowed) and whose correct answer ``expect`` is a *position* among the shown
frames (0-based) or -1 for "none". Its score is reported on the admin page and in the export's
``Study/catch_*`` columns; ``max_failed_catch`` screens out who fails more than that many.

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
        "The numbered images change step by step, from 1 onwards. Select the FIRST image in which "
        "the answer to the question is clearly yes, or choose 'None of them'. Then press Submit."),
    "annotation_instructions": (
        "Draw where you see the evidence for your answer: click (or tap) to add corners of a shape, "
        "close it by clicking its first corner or 'Close shape'. You can draw several shapes. "
        "Keyboard: arrow keys move the cursor, Enter adds a corner. Then press Submit."),
    "images": None,
    "annotation_images": None,
    "tasks": list(TASKS),
    "frames": None,
    "counterfactuals": "first",
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
    "panel_params": ["PROLIFIC_PID", "STUDY_ID", "SESSION_ID"],
    "panel_id_param": "PROLIFIC_PID",
    "completion": None,
    "screened_out": None,
    "max_failed_catch": None,
    "language": "en",
    "texts": {},
    "conditions": None,
    "block_order": "fixed",
    "catch_placement": "random",
    "questionnaire": [],
}

QUESTION_TYPES = ("number", "choice", "text")
_QUESTION_KEYS = {"name", "type", "label", "required", "min", "max", "options", "max_length"}

_PARAM_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")

#: Every text the pages show besides the config's own (title, question, instructions, consent,
#: thank_you); ``texts`` in the config replaces any of them, e.g. to run the study in another
#: language. ``{name}`` parts are filled in by the page.
DEFAULT_TEXTS: dict[str, str] = {
    "intro": "In this study you will see {n} short tasks about images. Your answers are saved after each "
             "task, so you can take a break and continue later from your personal link.",
    "consent_label": "I have read this and agree to take part.",
    "consent_first": "Please tick the consent box first.",
    "start": "Start the study",
    "continue": "Continue where you left off",
    "already_started": "You already started this study in this browser.",
    "already_done": "You have already completed this study in this browser. Thank you!",
    "start_new": "I am someone else: start as a new participant",
    "task_of": "Task {k} of {n}",
    "personal_link": "Your personal link (bookmark it to continue later):",
    "participant_id": "Participant id (quote it to have your answers withdrawn):",
    "none_of_them": "None of them",
    "submit": "Submit",
    "close_shape": "Close shape",
    "undo": "Undo",
    "delete": "Delete",
    "shape": "Shape {i} ({n} corners)",
    "status_start": "Click or tap on the image to start a shape.",
    "status_more": "Add at least {n} more corner(s).",
    "status_close": "Close the shape (its first corner or 'Close shape') before submitting.",
    "status_shapes": "{n} shape(s). Draw another one, or Submit.",
    "max_points": "A shape can have at most {n} corners; close it.",
    "max_polygons": "At most {n} shapes per image.",
    "kept_elsewhere": "This task was already answered in another window or tab. The answer kept is: {answer}.",
    "kept_none": "'None of them'",
    "kept_frame": "image {k}",
    "kept_shapes": "{n} shape(s)",
    "completion_code": "Your completion code:",
    "completion_link": "Finish and return to the recruitment site",
    "redirecting": "You are taken back to the recruitment site in a few seconds.",
    "screened_out": "Thank you for your time. The study has ended for you.",
    "withdrawn": "You withdrew from this study. Thank you for your time.",
    "leave_warning": "Your shapes on this image are not submitted yet.",
    "restored": "Your shapes that were not submitted yet are restored.",
    "frame_alt": "step {k} of {n}",
    "annotation_alt": "the image to mark",
    "canvas_label": "Drawing area. Arrow keys move the cursor (Shift: finer), Enter adds a corner.",
    "link_not_found": "This link does not lead to a study session. Please check that you copied the whole "
                      "link (it is long and easy to cut off), or open the start page.",
    "start_page": "Open the start page",
    "questionnaire_intro": "Almost done. Please answer these questions (the optional ones you may leave empty).",
    "questionnaire_send": "Send and finish",
    "optional": "(optional)",
    "choose": "Please choose",
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
    #: The between-subject condition this study is (None: the study has no conditions).
    condition: str | None = None

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
        when ``randomize`` is on; the task blocks follow ``tasks`` (``block_order: fixed``) or a
        seeded random order per participant (``random``); catch trials go into the selection
        block as ``catch_placement`` says (:func:`place_catch`).
        """
        rng = random.Random(f"{self.config['seed']}:{seed_key}")
        tasks = list(self.config["tasks"])
        if self.config["block_order"] == "random":
            rng.shuffle(tasks)
        plan: list[str] = []
        for task in tasks:
            imgs = list(self.selection_images if task == "selection" else self.annotation_images)
            if self.config["randomize"]:
                rng.shuffle(imgs)
            block = [("sel:" if task == "selection" else "ann:") + img for img in imgs]
            if task == "selection":
                block = place_catch(block, list(self.catch_trials), self.config["catch_placement"], rng)
            plan += block
        return plan


def place_catch(block: list[str], catch: list[str], placement: str, rng: random.Random) -> list[str]:
    """``block`` with the ``catch`` trial keys put in: ``random`` (seeded places), ``start``,
    ``end``, or ``spread`` (evenly between the trials: not first or last where the block has two
    trials or more)."""
    if placement == "start":
        return catch + block
    if placement == "end":
        return block + catch
    out = list(block)
    if placement == "spread":
        n = len(catch)
        # Slots in the original block, inserted from the back so that earlier slots stay valid.
        slots = [max(1, min(len(block) - 1, round((j + 1) * len(block) / (n + 1)))) if block else 0 for j in range(n)]
        for j in reversed(range(n)):
            out.insert(slots[j], catch[j])
        return out
    for key in catch:
        out.insert(rng.randint(0, len(out)), key)
    return out


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
    if cfg["counterfactuals"] not in ("first", "all"):
        raise StudyConfigError(f"{where}: 'counterfactuals' must be first or all, got {cfg['counterfactuals']!r}")
    _int(cfg, "display_size", where, 64, 4096)
    _int(cfg, "frame_size", where, 32, 1024)
    _int(cfg, "seed", where, 0)
    _int(cfg, "max_polygons", where, 1, 100)
    _int(cfg, "max_points", where, 3, 1000)
    _int(cfg, "max_participants", where, 1, optional=True)
    if not isinstance(cfg["randomize"], bool):
        raise StudyConfigError(f"{where}: 'randomize' must be true or false")
    for key, allowed in (("block_order", ("fixed", "random")), ("catch_placement", ("random", "start", "end", "spread"))):
        if cfg[key] not in allowed:
            raise StudyConfigError(f"{where}: '{key}' must be one of {', '.join(allowed)}, got {cfg[key]!r}")
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
    _check_panel(cfg, where)
    return cfg


def _check_panel(cfg: dict, where: str) -> None:
    """The recruitment-panel keys: parameter names, the id parameter, completion codes and URLs."""
    names = cfg["panel_params"]
    if not isinstance(names, list) or any(not isinstance(n, str) or not _PARAM_RE.match(n) for n in names):
        raise StudyConfigError(f"{where}: 'panel_params' must be a list of URL parameter names "
                               f"(letters, digits, '_', '.', '-'), got {names!r}")
    pid = cfg["panel_id_param"]
    if pid is not None and pid not in names:
        raise StudyConfigError(f"{where}: 'panel_id_param' {pid!r} must be one of 'panel_params' ({names}) or null")
    for key in ("completion", "screened_out"):
        v = cfg[key]
        if v is None:
            continue
        texts = {k: x for k, x in v.items() if k != "redirect"} if isinstance(v, dict) else {}
        if (not isinstance(v, dict) or not texts or set(v) - {"code", "url", "redirect"}
                or any(not isinstance(x, str) or not x.strip() for x in texts.values())
                or not isinstance(v.get("redirect", False), bool) or (v.get("redirect") and "url" not in v)):
            raise StudyConfigError(f"{where}: '{key}' must be {{code: TEXT, url: https://..., redirect: true|false}} "
                                   f"(code and/or url; redirect needs the url), got {v!r}")
        # Only web links: the URL becomes a link on the page, so no javascript: or data: URLs.
        if "url" in v and not re.match(r"^https?://[^\s]+$", v["url"]):
            raise StudyConfigError(f"{where}: '{key}.url' must be an http:// or https:// URL, got {v['url']!r}")
    _int(cfg, "max_failed_catch", where, 0, optional=True)
    _check_texts(cfg, where)
    _check_conditions(cfg, where)
    if not isinstance(cfg["questionnaire"] or [], list):
        raise StudyConfigError(f"{where}: 'questionnaire' must be a list of questions")
    cfg["questionnaire"] = [_check_question(q, i, where) for i, q in enumerate(cfg["questionnaire"] or [])]
    names = [q["name"] for q in cfg["questionnaire"]]
    if len(set(names)) != len(names):
        raise StudyConfigError(f"{where}: questionnaire names must differ, got {names}")


def _check_question(q, i: int, where: str) -> dict:
    """One questionnaire item, with defaults filled in (``required`` false, ``max_length`` 1000)."""
    bad = f"{where}: questionnaire[{i}]"
    if not isinstance(q, dict) or not {"name", "type", "label"} <= set(q) or set(q) - _QUESTION_KEYS:
        raise StudyConfigError(f"{bad} must be {{name, type: number|choice|text, label, required?, min?, max?, "
                               f"options?, max_length?}}, got {q!r}")
    if not isinstance(q["name"], str) or not _PARAM_RE.match(q["name"]) or q["type"] not in QUESTION_TYPES:
        raise StudyConfigError(f"{bad}: 'name' must be letters, digits, '_', '.', '-' and 'type' one of "
                               f"{', '.join(QUESTION_TYPES)}, got {q['name']!r}, {q['type']!r}")
    if not isinstance(q["label"], str) or not q["label"].strip() or not isinstance(q.get("required", False), bool):
        raise StudyConfigError(f"{bad}: 'label' must be a text and 'required' true or false")
    out = {"required": False, **q}
    if q["type"] == "choice":
        opts = q.get("options")
        if not isinstance(opts, list) or len(opts) < 2 or any(not isinstance(o, str) or not o for o in opts):
            raise StudyConfigError(f"{bad}: a choice needs 'options', a list of at least two texts")
    if q["type"] == "number":
        for k in ("min", "max"):
            if k in q and (isinstance(q[k], bool) or not isinstance(q[k], (int, float))):
                raise StudyConfigError(f"{bad}: '{k}' must be a number")
    if q["type"] == "text":
        out["max_length"] = q.get("max_length", 1000)
        if isinstance(out["max_length"], bool) or not isinstance(out["max_length"], int) or not 1 <= out["max_length"] <= 10000:
            raise StudyConfigError(f"{bad}: 'max_length' must be an integer in [1, 10000]")
    return out


def _check_conditions(cfg: dict, where: str) -> None:
    """``conditions``: a list of ``{name, runs}`` with distinct URL-safe names and run folders."""
    conds = cfg["conditions"]
    if conds is None:
        return
    form = "a list of {name: NAME, runs: [RUN_DIR, ...]} (at least two)"
    if not isinstance(conds, list) or len(conds) < 2:
        raise StudyConfigError(f"{where}: 'conditions' must be {form}")
    for i, c in enumerate(conds):
        if (not isinstance(c, dict) or set(c) != {"name", "runs"} or not isinstance(c["name"], str)
                or not _ID_RE.match(c["name"]) or not isinstance(c["runs"], list) or not c["runs"]
                or any(not isinstance(r, str) or not r for r in c["runs"])):
            raise StudyConfigError(f"{where}: conditions[{i}] must be {{name: NAME (letters, digits, '.', '-'), "
                                   f"runs: [RUN_DIR, ...]}}, got {c!r}")
    names = [c["name"] for c in conds]
    if len(set(names)) != len(names):
        raise StudyConfigError(f"{where}: condition names must differ, got {names}")


def _check_texts(cfg: dict, where: str) -> None:
    """``language`` (an HTML language tag) and ``texts`` (known keys, non-empty texts); stores the
    merged texts (defaults updated from the config) back in ``cfg["texts"]``."""
    if not isinstance(cfg["language"], str) or not re.match(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$", cfg["language"]):
        raise StudyConfigError(f"{where}: 'language' must be a language tag like en or de-CH, got {cfg['language']!r}")
    texts = cfg["texts"] or {}
    if not isinstance(texts, dict):
        raise StudyConfigError(f"{where}: 'texts' must be a mapping of text names to texts")
    unknown = sorted(set(texts) - set(DEFAULT_TEXTS))
    if unknown:
        raise StudyConfigError(f"{where}: unknown text(s) {', '.join(map(str, unknown))} in 'texts'; "
                               f"known: {', '.join(DEFAULT_TEXTS)}")
    bad = [k for k, v in texts.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise StudyConfigError(f"{where}: texts {', '.join(bad)} must be non-empty texts")
    cfg["texts"] = {**DEFAULT_TEXTS, **texts}


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
def _finished_items(run_dirs: Sequence, every_counterfactual: bool = False
                    ) -> tuple[dict[str, runfolder.RunItem], dict[str, Path]]:
    """``{image id: finished item}`` over ``run_dirs`` and ``{image id: its run folder}``; with
    ``every_counterfactual`` the further counterfactuals of a ``--num-cfs`` run are items too
    (``<id>.cf<r>``, :func:`dvce.runfolder.with_ranks`).

    Raises :class:`StudyConfigError` for no run folder, a missing one, one without finished
    items, or an image id found in two runs.
    """
    found: dict[str, runfolder.RunItem] = {}
    where: dict[str, Path] = {}
    if not run_dirs:
        raise StudyConfigError("no run folder given (pass one or more `ldvce generate` output folders)")
    for rd in run_dirs:
        # Absolute from here on: Flask's send_file would resolve a relative path against the
        # app's package folder, not the folder `ldvce study serve` was started in.
        rd = Path(rd).resolve()
        if not rd.is_dir():
            raise StudyConfigError(f"run folder not found: {rd}")
        items = runfolder.list_items(rd)
        if every_counterfactual:
            items = runfolder.with_ranks(items)
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


def _check_frames(it: runfolder.RunItem, paths: Sequence[Path]) -> None:
    """Refuse an item whose frame files are not all there: participants would see broken images
    (and with frames missing from the middle, the frame indices would shift)."""
    listed = (it.result or {}).get("frames")
    n = len(listed) if isinstance(listed, list) else 0
    lost = [p.name for p in paths if not Path(p).is_file()]
    if lost or (n and len(paths) != n):
        raise StudyConfigError(
            f"{it.folder}: frame images are missing ({len(paths) - len(lost)} found, "
            f"{n or len(paths)} listed in result.json{'; e.g. ' + ', '.join(lost[:3]) if lost else ''}); "
            f"participants would see broken images. Re-run `ldvce generate` for this item or leave it out "
            f"with 'images' in the study config")
    if not Path(it.original).is_file():
        raise StudyConfigError(f"{it.folder}: {Path(it.original).name} is missing")


def build_studies(run_dirs: Sequence, config: dict | None = None) -> dict[str | None, Study]:
    """``{condition: Study}``: one study per configured condition (each over its own runs), or
    ``{None: study}`` over ``run_dirs`` without conditions.

    Raises
    ------
    StudyConfigError
        As :func:`build_study` (naming the condition), or run folders given both ways.
    """
    cfg = config if config is not None else load_config(None)
    if not cfg["conditions"]:
        return {None: build_study(run_dirs, cfg)}
    if run_dirs:
        raise StudyConfigError("the config defines 'conditions' with their own runs; give no RUN_DIR "
                               f"arguments then (got {', '.join(map(str, run_dirs))})")
    out = {}
    for c in cfg["conditions"]:
        try:
            out[c["name"]] = build_study(c["runs"], cfg, condition=c["name"])
        except StudyConfigError as exc:
            raise StudyConfigError(f"condition {c['name']}: {exc}") from exc
    return out


def studies_fingerprint(studies: dict) -> str:
    """The fingerprint of one or several conditions' studies (see :meth:`Study.fingerprint`)."""
    if list(studies) == [None]:
        return studies[None].fingerprint()
    parts = "|".join(f"{name}={s.fingerprint()}" for name, s in studies.items())
    return hashlib.sha256(parts.encode()).hexdigest()[:16]


def build_study(run_dirs: Sequence, config: dict | None = None, condition: str | None = None) -> Study:
    """The study over the finished items of ``run_dirs``.

    Parameters
    ----------
    run_dirs : sequence of path
        ``ldvce generate`` output folders.
    config : dict, optional
        From :func:`load_config`; the defaults when None.
    condition : str, optional
        The between-subject condition this study is (see :func:`build_studies`).

    Raises
    ------
    StudyConfigError
        A run folder without finished items, an image id found in two runs, an id the export
        format cannot carry, an image named in the config that no run has, or an image without
        frames.
    """
    cfg = config if config is not None else load_config(None)
    found, where = _finished_items(run_dirs, cfg["counterfactuals"] == "all")
    wanted = cfg["images"] if cfg["images"] is not None else list(found)
    missing = [i for i in wanted if i not in found]
    if missing:
        raise StudyConfigError(f"image(s) {', '.join(missing)} named in the config are in none of the runs "
                               f"({', '.join(map(str, run_dirs))}); available: {', '.join(list(found)[:20])}")
    # the polygon task shows the original: once per image, not once per counterfactual
    ann = (cfg["annotation_images"] if cfg["annotation_images"] is not None
           else [i for i in wanted if found[i].rank_dir == "."])
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
        _check_frames(it, paths)
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
    return Study(cfg, images, sel, ann, catch, condition)
