"""``ldvce xai compare``: attribution methods × metrics on one classifier and one set of faces.

:func:`compare` computes every method's maps (:mod:`xai.attributions`), scores them
(:mod:`experiments.compare.scoring`) and returns the result; :func:`run_compare` loads the
inputs, writes ``compare.json``, ``compare.csv``, ``grid.png`` and ``report.html`` into the
output folder and prints the table.
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from dvce.samplers import ONE_PASS
from experiments.compare import data as D
from experiments.compare import scoring as S
from experiments.compare.figures import grid_figure
from experiments.compare.report import write_report
from experiments.config import as_dict
from fileio import atomic_write_text, write_json
from xai.attributions import METHODS, attribution_maps, decision_direction, parse_methods
from xai.faithfulness import randomized_copy


def parse_metrics(spec) -> list[str]:
    """``"localisation,sanity"`` (or a list) -> validated metric groups; None -> all."""
    if spec is None:
        return list(D.METRIC_GROUPS)
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    bad = [n for n in names if n not in D.METRIC_GROUPS]
    if bad or not [n for n in names if n]:
        raise ValueError(f"unknown metric group(s) {bad or spec!r}; choose from "
                         f"{list(D.METRIC_GROUPS)}")
    return [n for n in names if n]


class _Counterfactuals:
    """Counterfactuals made once per model (trained or randomised), with the time they took."""

    def __init__(self, faces, attribute, config, run=None):
        self.faces, self.attribute, self.config, self.run = faces, attribute, config, run
        self.made: dict[int, tuple] = {}

    def get(self, model, randomised: bool = False):
        if randomised and self.run is not None:
            return None, 0.0  # a run folder holds the trained model's counterfactuals only
        if id(model) not in self.made:
            t0 = time.perf_counter()
            # the randomised model rarely flips: one pass of the sampler, no retries (the test
            # asks whether the change depends on the weights, not whether it flips)
            config = (replace(self.config, sampler_options={**self.config.sampler_options,
                                                            **ONE_PASS.get(self.config.sampler, {})})
                      if randomised else self.config)
            cf = D.counterfactuals(model, self.faces, self.attribute, config,
                                   None if randomised else self.run)
            self.made[id(model)] = (cf, time.perf_counter() - t0)
        return self.made[id(model)]


def _score_method(name, model, faces, metrics, config, ctx) -> dict:
    """One method: its maps, per-face scores, summaries, timing and randomisation verdict."""
    attr, x, n = config.attribute, faces.images, len(faces.images)
    needs_cf = METHODS[name].needs_counterfactual
    cf, cf_s = ctx["cf"].get(model) if needs_cf else (None, 0.0)
    t0 = time.perf_counter()
    maps = attribution_maps(model, x, attr, name, counterfactuals=cf, direction=ctx["direction"])
    seconds = (time.perf_counter() - t0 + cf_s) / n
    per: dict[str, np.ndarray] = {}
    curves = None
    if "localisation" in metrics:
        per.update(S.localisation(maps, faces.masks))
    if "faithfulness" in metrics:
        f, curves = S.faithfulness(model, x, attr, maps, ctx["direction"], config.steps)
        per.update(f)
    verdict = None
    if "sanity" in metrics:
        verdict, sim = _randomisation(name, faces, config, ctx, maps)
        if sim is not None:
            per["randomisation_similarity"] = sim
    if "humans" in metrics and ctx.get("people"):
        per.update({f"hrh_{k}": v for k, v in
                    S.humans(maps, ctx["people"], faces.ids, ctx["hrh_size"]).items()})
    return {"label": METHODS[name].label, "family": METHODS[name].family,
            "seconds_per_image": seconds,
            "metrics": {k: S.summarise(v, config.n_bootstrap, config.seed) for k, v in per.items()},
            "per_face": {k: v.tolist() for k, v in per.items()},
            "randomisation": verdict, "curves": curves, "maps": maps}


def _randomisation(name, faces, config, ctx, maps):
    """``("pass" | "fail" | "n/a", per-face similarities or None)``."""
    rnd = ctx["random_model"]
    cf = None
    if METHODS[name].needs_counterfactual:
        cf, _ = ctx["cf"].get(rnd, randomised=True)
        if cf is None:
            return "n/a (counterfactuals read from a run folder)", None
    rmaps = attribution_maps(rnd, faces.images, config.attribute, name, counterfactuals=cf,
                             direction=ctx["random_direction"])
    sim = S.randomisation_similarity(maps, rmaps)
    ok = float(np.nanmean(sim)) < config.randomisation_threshold if np.isfinite(sim).any() else False
    return ("pass" if ok else "fail"), sim


def compare(model, faces: D.Faces, methods=None, metrics=None, config: D.CompareConfig = D.CompareConfig(),
            run=None, people: dict | None = None) -> dict:
    """Every method of ``methods`` scored by every group of ``metrics`` on ``faces``.

    Parameters
    ----------
    model : the classifier.
    faces : :class:`~experiments.compare.data.Faces` (masks needed for localisation).
    methods : names of :data:`xai.attributions.METHODS` (default
        :data:`~experiments.compare.data.DEFAULT_METHODS`).
    metrics : groups of :data:`~experiments.compare.data.METRIC_GROUPS` (default all).
    config : settings (:class:`~experiments.compare.data.CompareConfig`).
    run : a run folder with the faces' counterfactuals (default: made with the sampler).
    people : ``{face id: (P, S, S) bool}`` annotator masks (the HRHs), for ``humans``.

    Returns
    -------
    dict: ``methods`` (per method: label, family, seconds_per_image, metrics {name: {mean, ci,
    n}}, per_face, randomisation, curves, maps), ``human_ceiling``, ``n``.
    """
    methods = parse_methods(methods or list(D.DEFAULT_METHODS))
    metrics = parse_metrics(metrics)
    if "localisation" in metrics and faces.masks is None:
        metrics.remove("localisation")
    ctx = {"direction": decision_direction(model, faces.images, config.attribute),
           "cf": _Counterfactuals(faces, config.attribute, config, run), "people": people,
           "hrh_size": next(iter(people.values())).shape[-1] if people else None}
    if "sanity" in metrics:
        ctx["random_model"] = randomized_copy(model, config.seed)
        ctx["random_direction"] = decision_direction(ctx["random_model"], faces.images,
                                                     config.attribute)
    result = {"n": len(faces.images), "metrics_groups": metrics,
              "methods": {m: _score_method(m, model, faces, metrics, config, ctx) for m in methods}}
    if "humans" in metrics and people:
        result["human_ceiling"] = S.human_ceiling(people, config.n_bootstrap, config.seed)
    return result


def csv_text(result: dict) -> str:
    """The methods × metrics table as CSV: mean, CI low, CI high per metric, seconds per image
    and the randomisation verdict."""
    names = sorted({k for r in result["methods"].values() for k in r["metrics"]},
                   key=_metric_order)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "label", "seconds_per_image", "randomisation"]
               + [f"{k}_{p}" for k in names for p in ("mean", "ci_low", "ci_high")])
    for name, r in result["methods"].items():
        row = [name, r["label"], f"{r['seconds_per_image']:.4f}", r["randomisation"] or ""]
        for k in names:
            s = r["metrics"].get(k)
            ci = (s or {}).get("ci") or [None, None]
            row += [_num(s and s["mean"]), _num(ci[0]), _num(ci[1])]
        w.writerow(row)
    return buf.getvalue()


def _num(v) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v:.4f}"


_ORDER = list(S.LOCALISATION) + ["deletion_auc", "insertion_auc", "aopc",
                                 "randomisation_similarity"] + [f"hrh_{k}" for k in S.HUMAN]


def _metric_order(k: str) -> int:
    return _ORDER.index(k) if k in _ORDER else len(_ORDER)


def format_table(result: dict) -> str:
    """The table as text (means; ``rand`` = pass/fail of the randomisation test)."""
    names = sorted({k for r in result["methods"].values() for k in r["metrics"]},
                   key=_metric_order)
    short = {k: k.replace("_accuracy", "").replace("randomisation_similarity", "rand_sim")
             .replace("pointing_game", "pointing").replace("deletion_auc", "deletion")
             .replace("insertion_auc", "insertion") for k in names}
    w = {k: max(7, len(short[k]) + 2) for k in names}  # columns never run together
    lines = [f"{'method':<22}" + "".join(f"{short[k]:>{w[k]}}" for k in names)
             + f"{'s/img':>8}  rand"]
    for name, r in result["methods"].items():
        cells = "".join(f"{r['metrics'][k]['mean']:>{w[k]}.3f}" if k in r["metrics"]
                        else f"{'–':>{w[k]}}" for k in names)
        lines.append(f"{name:<22}{cells}{r['seconds_per_image']:>8.3f}  {r['randomisation'] or '–'}")
    ceiling = result.get("human_ceiling")
    if ceiling:
        lines.append(f"{'human ceiling (LOO)':<22}" + "".join(
            f"{ceiling[k[4:]]['mean']:>{w[k]}.3f}" if k.startswith("hrh_") and k[4:] in ceiling
            else f"{'':>{w[k]}}" for k in names))
    return "\n".join(lines)


def public(result: dict) -> dict:
    """The result without the maps (for ``compare.json``)."""
    return {**result, "methods": {m: {k: v for k, v in r.items() if k != "maps"}
                                  for m, r in result["methods"].items()}}


def run_compare(classifier, out, data=None, n: int = 32, methods=None, metrics=None,
                run=None, hrh_export=None, config: D.CompareConfig = D.CompareConfig(),
                device: str = "cpu", quiet: bool = False) -> dict:
    """What ``ldvce xai compare`` does: load the classifier and the faces (a toyfaces folder,
    default the toy world's unseen test set; or a real study's images with ``hrh_export``),
    compare, write ``compare.json``, ``compare.csv``, ``grid.png`` and ``report.html`` into
    ``out`` and print the table. Returns the result (without maps)."""
    t0 = time.perf_counter()
    out = Path(out)
    model = D.load_model(classifier, device)
    if hrh_export:
        if data is None:
            raise ValueError("--hrh-export needs --data: the folder of the study's images")
        faces, ex = D.study_faces(hrh_export, data, model.hparams.get("image_size", 64))
        people = D.export_hrhs(ex, faces)
    else:
        if data is None:
            from toyfaces.world import TEST_DATA, toy_data
            data = toy_data(TEST_DATA, progress=not quiet)
        faces = D.toy_faces(data, n, config.attribute, config.region, config.faces_with)
        groups = parse_metrics(metrics)
        people = (D.simulated_hrhs(faces, config.participants, config.seed)
                  if "humans" in groups else None)
    result = compare(model, faces, methods, metrics, config, run=run, people=people)
    result.update(classifier=str(classifier), data=str(data), attribute=config.attribute,
                  region=None if hrh_export else (config.region or config.attribute),
                  hrh="export" if hrh_export else "simulated", settings=as_dict(config),
                  seconds_total=time.perf_counter() - t0)
    out.mkdir(parents=True, exist_ok=True)
    grid_figure(faces, result, out / "grid.png", people=people, rows=config.figure_faces)
    write_json(out / "compare.json", public(result), indent=1)
    atomic_write_text(out / "compare.csv", csv_text(result))
    write_report(out / "report.html", public(result), "grid.png")
    if not quiet:
        print(format_table(result))
        print(f"wrote {out / 'compare.json'}, compare.csv, grid.png, report.html "
              f"[{result['seconds_total']:.0f} s]")
    return public(result)
