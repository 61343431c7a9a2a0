"""The Clever-Hans experiment's report: the per-classifier table, what the numbers say, the
section any report can carry, and a page of its own."""
from __future__ import annotations

from pathlib import Path

from experiments.clever_hans.data import ROLES, TARGET
from experiments.clever_hans.figures import percent
from fileio.report import Report


ROWS = [("flip_rate", "counterfactual flips the classifier"),
        ("hat_change_rate", "most change on the hat (per pixel, vs the mouth)"),
        ("mouth_change_rate", "most change on the mouth (per pixel, vs the hat)"),
        ("hat_share", "mean share of |Δ| in the hat region"),
        ("mouth_share", "mean share of |Δ| in the mouth region"),
        ("flip_needs_hat_rate", "flips lost when the hat-region change is undone"),
        ("flip_needs_mouth_rate", "flips lost when the mouth-region change is undone"),
        ("oracle_hat_flip_rate", "oracle: Wearing_Hat changed"),
        ("oracle_smile_flip_rate", "oracle: Smiling changed"),
        ("lrp_hat_mass", "LRP relevance mass in the hat mask (both images)"),
        ("lrp_mouth_mass", "LRP relevance mass in the mouth mask (both images)"),
        ("lrp_hat_mass_post", "… of the counterfactual, in the hat mask"),
        ("lrp_mouth_mass_post", "… of the counterfactual, in the mouth mask"),
        ("crp_top_hat_mass", "top CRP concept for Smiling: relevance on the hat"),
        ("crp_top_mouth_mass", "top CRP concept for Smiling: relevance on the mouth"),
        ("intervention_hat_rate", "answer key: called smiling when a hat is rendered on"),
        ("intervention_smile_rate", "answer key: called smiling when a smile is rendered"),
        ("intervention_hat_gain", "answer key: Smiling logit gained from the hat (median)"),
        ("intervention_smile_gain", "answer key: Smiling logit gained from the smile (median)"),
        ("accuracy_correlated", "Smiling accuracy, hats as in biased training"),
        ("accuracy_decorrelated", "Smiling accuracy, hats independent"),
        ("accuracy_conflicting", "Smiling accuracy where hat ≠ smile"),
        ("sampler_mask_fraction", "sampler mask: share of the image"),
        ("sampler_mask_hat_coverage", "sampler mask: share of the hat region"),
        ("l1", "mean |Δ| (L1)"),
        # with several counterfactuals per face (num_cfs > 1)
        ("any_hat_change_rate", "a counterfactual of the face changes the hat most"),
        ("two_or_more_rate", "faces with ≥ 2 flipping counterfactuals"),
        ("mean_pairwise_iou", "mean pairwise IoU of their change masks")]


def summary_table(summary: dict) -> str:
    """The summary's per-classifier numbers as a plain-text table."""
    b = summary["spurious"]
    w = max(len(label) for _, label in ROWS)
    lines = [f"{'':<{w}}  {'biased':>8}  {'clean':>8}"]
    for key, label in ROWS:
        vals = [b[role].get(key) for role in ROLES]
        lines.append(f"{label:<{w}}  " + "  ".join("       –" if v is None else f"{v:8.3f}"
                                                   for v in vals))
    return "\n".join(lines)


def reading(summary: dict) -> str:
    """What the numbers say, in two sentences built from them (no claim the run did not
    measure): does the answer key show a hat reader, and did its counterfactuals show the hat?"""
    b = summary["spurious"]
    bi, cl = b["biased"], b["clean"]
    key = (f"The answer key says the biased classifier reads the hat: it calls "
           f"{percent(bi['intervention_hat_rate'])} of these faces smiling once a hat is drawn on "
           f"and {percent(bi['intervention_smile_rate'])} once the smile is drawn (clean: "
           f"{percent(cl['intervention_hat_rate'])} and {percent(cl['intervention_smile_rate'])})"
           f"{_gains(bi)}.")
    if bi["hat_change_rate"] >= 0.9 and bi["oracle_hat_flip_rate"] > bi["oracle_smile_flip_rate"]:
        cf = (f"Its counterfactuals show it: {percent(bi['hat_change_rate'])} change the hat region "
              f"most, and the oracle sees a hat appear in {percent(bi['oracle_hat_flip_rate'])}.")
    else:
        cf = (f"Its `{b['method']}` counterfactuals hide it: they flip {percent(bi['flip_rate'])} of "
              f"the faces, change the hat region most in only {percent(bi['hat_change_rate'])} (the "
              f"mouth in {percent(bi['mouth_change_rate'])}), and the oracle sees a hat appear in "
              f"{percent(bi['oracle_hat_flip_rate'])} but a smile in "
              f"{percent(bi['oracle_smile_flip_rate'])}; LRP of the counterfactuals puts "
              f"{bi['lrp_hat_mass_post']:.2f} of the biased decision's relevance on the hat region "
              f"(clean: {cl['lrp_hat_mass_post']:.2f}).")
    return f"{key} {cf}"


def _gains(score: dict) -> str:
    """The answer key's median logit gains, where the run measured them (older summaries have
    only the rates)."""
    hat, smile = score.get("intervention_hat_gain"), score.get("intervention_smile_gain")
    if hat is None or smile is None:
        return ""
    return (f"; the hat moves its {TARGET} logit by a median of {hat:+.1f}, the smile by "
            f"{smile:+.1f}")


def report_section(doc, out, summary: dict) -> None:
    """Append the experiment's section to ``doc`` (a :class:`fileio.report.Report`): what was
    done, the overview figure, the per-classifier table and the CRP concepts. Any report can
    carry it; :func:`write_report` makes a page of it alone."""
    out = Path(out)
    b = summary["spurious"]
    doc.heading("A classifier that learnt a spurious cue")
    biased = (f"the *biased* one was trained where every smiling face wears a hat ({b['cue']} "
              f"copies {b['target']} with p = {b['strength']:g})" if not b.get("biased_given")
              else f"in the *biased* role the checkpoint "
                   f"`{Path(b['classifiers']['biased']).name}` given to the run")
    doc.paragraph(
        f"Two toy ResNets with the same recipe: {biased}, the "
        f"*clean* one where hats are independent of smiles. Both were asked to make the same "
        f"{b['images']} unseen not-smiling, hat-less faces (seed {b['data_seed']}) smile with the "
        f"`{b['method']}` sampler. The toy world's masks say where each counterfactual changed "
        "the face, the independent oracle what it sees change, and the renderer's answer key "
        "(the same faces drawn with a hat, or with a smile) what each classifier really uses.")
    doc.paragraph(reading(summary))
    doc.image(out / "overview.png", "overview", width=1000, embed=True)
    if (out / "counterfactuals.png").is_file() and b.get("num_cfs", 1) > 1:
        doc.paragraph(f"Up to {b['num_cfs']} counterfactuals per face, each keeping the pixels "
                      "the earlier ones changed most (`--num-cfs`), ranked by L1: every one.")
        doc.image(out / "counterfactuals.png", "every counterfactual", width=1000, embed=True)
    doc.table(["", *ROLES], [[label, *(b[role].get(key) for role in ROLES)]
                             for key, label in ROWS], row_headers=True)
    for role in ROLES:
        crp = b[role].get("crp")
        if not crp:
            continue
        doc.heading(f"{role}: CRP concepts", 3)
        doc.paragraph("The concepts that changed most between originals and counterfactuals "
                      "(relevance measured on the counterfactuals), and the classifier's top "
                      f"concepts for {TARGET} (relevance measured on their reference images).")
        doc.table(["concept", "relevance on the hat", "on the mouth", "why listed"],
                  [[c["concept"], c["hat_mass"], c["mouth_mass"],
                    f"among the most changed in {c['times_among_most_changed']} pairs"]
                   for c in crp["concepts"]]
                  + [[c["concept"], c["hat_mass"], c["mouth_mass"],
                      f"top for {TARGET} (mean share {c['mean_share']:+.3f})"]
                     for c in crp.get("top_concepts", [])])
        if crp.get("reference_figure"):
            doc.image(crp["reference_figure"], f"{role}: reference images", width=560, embed=True)


def write_report(out, summary: dict) -> Path:
    """``out/report.html``: the experiment's section as a page of its own."""
    doc = Report("lDVCE: a spurious cue")
    doc.heading("lDVCE demo: what counterfactuals are for", 1)
    report_section(doc, out, summary)
    doc.paragraph(f"Run time {summary['seconds']:.0f} s.")
    return doc.write_html(Path(out) / "report.html")

