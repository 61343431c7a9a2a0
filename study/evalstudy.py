"""Evaluate a user-study export: ``python study/evalstudy.py --export CSV --images DIR --out OUT``.

Also reachable as ``ldvce study eval`` (which reuses :func:`add_arguments` and :func:`run`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: Python put study/ itself on sys.path, where export.py, metrics.py … would
    # shadow same-named top-level modules. Swap it for the repository root so `import study` works.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

DESCRIPTION = """\
Evaluate the lDVCE user study from the study app's CSV export.

Two tasks are evaluated:
  selection   participants picked the first frame of a counterfactual sequence in which the
              person smiles (-1 = nobody smiles, 0 = original, 1 = DDIM reconstruction,
              2.. = optimisation steps). Output: counts per image, mean choice per participant,
              outliers, and agreement with the classifier's switch frame (needs --runs).
  annotation  participants drew polygons where they think the decision lives. Output: human
              relevance heatmaps (HRH = per pixel, how many participants covered it) as
              OUT/hrh/<image>.npy and overlays, the inter-annotator "human ceiling", and, with
              --heatmaps/--runs, metrics of model heatmaps and counterfactual differences vs HRHs
              (relevance mass/rank accuracy, pointing game, AUC, Spearman, IoU/Dice of top 10 %).

Exports of `ldvce study serve` also carry each participant's status, condition, panel parameters,
catch-trial score and timings (Study/... columns): --finished-only, --exclude-failed-catch and
--exclude-file leave participants out (the report lists who and why), and the report gains
timings and, with several conditions, a per-condition table.

Writes OUT/study_summary.json, OUT/report.md, OUT/report.html, OUT/hrh/*.npy, OUT/figures/.
"""

EPILOG = """\
examples:
  python study/evalstudy.py --export ../shared/seed/study/studyentries.csv \\
      --images ../shared/seed/celebahq/test_counterfactual --out runs/study
  python study/evalstudy.py --export study.csv --images imgs --out runs/study \\
      --heatmaps runs/explain --runs runs/generate --bootstrap 1000 --seed 1
  ldvce study eval --export studyentries.csv --runs guided=runs/guided --runs plain=runs/plain \\
      --out runs/study --finished-only --exclude-failed-catch --exclude-file exclusions.txt

layouts: heatmaps are read from HEATMAPS/<image_id>/heatmap_<composite>_pre.npy and runs from
RUNS/<image_id>/{result.json,original.png,counterfactual.png}; a folder whose name contains the
image id as a token (e.g. 27300_1.0_misclassified) is accepted too.
"""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the evaluation options to ``parser`` (used by this script and ``ldvce study eval``)."""
    from study.selection import OUTLIER_RULES

    parser.add_argument("--export", required=True, type=Path, metavar="CSV",
                        help="study export CSV (one row per participant), e.g. studyentries.csv")
    parser.add_argument("--images", type=Path, metavar="DIR", default=None,
                        help="folder with the study images <id>_1.0_misclassified.png, drawn under the HRHs")
    parser.add_argument("--out", required=True, type=Path, metavar="OUT", help="output folder (created)")
    parser.add_argument("--heatmaps", type=Path, metavar="DIR", default=None,
                        help="`ldvce explain` output: DIR/<id>/heatmap_<composite>_pre.npy are compared with the HRHs")
    parser.add_argument("--heatmap-layout", default=None, metavar="PATTERN",
                        help="where heatmaps are under --heatmaps (default '{image_id}/heatmap_*_pre.npy'; "
                             "the * part names the method)")
    parser.add_argument("--runs", type=str, metavar="DIR", default=None, action="append",
                        help="`ldvce generate` output: DIR/<id>/result.json gives the classifier's switch frame; "
                             "original.png/counterfactual.png give a difference map compared with the HRHs. "
                             "May be given several times; the first folder holding an image is used for it. "
                             "As NAME=DIR it is study condition NAME's run: the per-condition tables take "
                             "that condition's switch frames from it")
    parser.add_argument("--run-layout", default=None, metavar="PATTERN",
                        help="where a run's folder is under --runs (default '{image_id}')")
    parser.add_argument("--display-size", type=int, default=512, metavar="PX",
                        help="size the images were shown at; polygon coordinates are in this frame (default 512)")
    parser.add_argument("--analysis-size", type=int, default=256, metavar="PX",
                        help="size of the HRHs; polygons are scaled display→analysis (default 256)")
    parser.add_argument("--raster", choices=("seed", "enclosed", "centre"), default="seed",
                        help="how polygons become HRH pixels: seed = the original evaluation's rule, "
                             "pixel for pixel (vertices scaled and truncated to integers, every polygon "
                             "filled as OpenCV's fillPoly fills it, outline included, so a 2-click polygon "
                             "counts as its line; union per participant); enclosed = seed without polygons "
                             "of fewer than 3 vertices, which enclose no area; centre = pixels whose centre "
                             "lies inside the exact polygon (4-7 %% fewer pixels) (default seed)")
    parser.add_argument("--outlier-rule", choices=sorted(OUTLIER_RULES), default="mean-zero",
                        help="which participants count as outliers: mean-zero = mean choice exactly 0 "
                             "(the seed's rule), all-original = always chose frame 0, none (default mean-zero)")
    parser.add_argument("--exclude-outliers-from-hrh", action="store_true",
                        help="also leave outliers out of the HRHs (they are always left out of the histograms)")
    parser.add_argument("--bootstrap", type=int, default=200, metavar="N",
                        help="bootstrap resamples of participants for confidence intervals; 0 = none (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--no-figures", action="store_true", help="skip figures (numbers, HRHs and reports only)")
    parser.add_argument("--finished-only", action="store_true",
                        help="leave out participants who did not finish (empty submittedAt; screened-out ones too)")
    parser.add_argument("--exclude-failed-catch", action="store_true",
                        help="leave out participants who failed a catch trial (needs the study server's "
                             "Study/catch_passed and Study/catch_total columns)")
    parser.add_argument("--exclude-file", type=Path, metavar="FILE", default=None,
                        help="leave out the participants listed in FILE: one id per line, optionally "
                             "followed by ',' and a reason; '#' starts a comment line")
    return parser


def split_runs(entries) -> tuple[list[Path], dict[str, Path]]:
    """``--runs`` entries as (every run folder, ``{condition: folder}`` of the ``NAME=DIR`` ones).
    An entry that exists as a path is a plain folder even if it contains ``=``."""
    import re

    dirs, named = [], {}
    for e in entries or []:
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9.\-]*)=(.+)$", e)
        if m and not Path(e).exists():
            named[m.group(1)] = Path(m.group(2))
            dirs.append(Path(m.group(2)))
        else:
            dirs.append(Path(e))
    return dirs, named


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``study/evalstudy.py``."""
    parser = argparse.ArgumentParser(prog="evalstudy.py", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation for parsed ``args``; prints a short summary, returns an exit code."""
    from study.evaluate import HEATMAP_LAYOUT, RUN_LAYOUT, evaluate_study
    from study.export import ExportError

    runs, condition_runs = split_runs(args.runs)
    try:
        summary = evaluate_study(
            args.export, images_dir=args.images, out_dir=args.out, heatmaps_dir=args.heatmaps,
            runs_dir=runs or None, condition_runs=condition_runs or None, display_size=args.display_size, analysis_size=args.analysis_size,
            outlier_rule=args.outlier_rule, n_bootstrap=args.bootstrap, seed=args.seed,
            heatmap_layout=args.heatmap_layout or HEATMAP_LAYOUT, run_layout=args.run_layout or RUN_LAYOUT,
            exclude_outliers_from_hrh=args.exclude_outliers_from_hrh, figures=not args.no_figures,
            raster=args.raster, finished_only=args.finished_only,
            exclude_failed_catch=args.exclude_failed_catch, exclude_file=args.exclude_file,
        )
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for d, what in [(args.images, "--images"), (args.heatmaps, "--heatmaps")] + [(r, "--runs") for r in runs]:
        if d is not None and not Path(d).is_dir():
            print(f"warning: {what} folder {d} does not exist; it was ignored", file=sys.stderr)
    hc = (summary.get("human_ceiling") or {}).get("mean", {}).get("mass_accuracy", {})
    if summary.get("excluded"):
        print(f"excluded {len(summary['excluded'])} participant(s): "
              + "; ".join(f"{e['id']} ({e['reason']})" for e in summary["excluded"][:10])
              + (" …" if len(summary["excluded"]) > 10 else ""))
    print(f"{summary['participants']} participants, {len(summary['selection'])} selection images, "
          f"{len(summary['hrh'])} annotation images, {len(summary['outliers'])} outlier(s), "
          f"{summary['n_issues']} parse issue(s)")
    if hc.get("mean") is not None:
        print(f"human ceiling (leave-one-out) relevance mass accuracy: {hc['mean']:.3f}")
    for name, r in summary.get("methods", {}).items():
        m = r["consensus"]["ge50"]["mass_accuracy"]["mean"]
        print(f"{name}: relevance mass accuracy vs HRH≥50% = {m:.3f}" if m is not None else f"{name}: no scores")
    print(f"wrote {Path(args.out) / 'study_summary.json'}, report.md, report.html")
    return 0


def main(argv=None) -> int:
    """Entry point: parse ``argv`` (default ``sys.argv[1:]``) and run."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
