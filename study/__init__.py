"""User-study evaluation: export parsing, selection analysis, HRHs, heatmap-vs-HRH metrics.

Entry points: :func:`evaluate_study` (library), ``python study/evalstudy.py`` (script) and
``ldvce study eval`` (CLI). The export format is documented in :mod:`study.export`, the
metrics in :mod:`study.metrics`.
"""

from .evaluate import evaluate_study, find_heatmaps, find_study_image, render_report
from .export import ExportError, ParseIssue, Participant, Polygon, StudyExport, read_export, write_export
from .hrh import compute_hrh, leave_one_out_hrhs, participant_mask, participant_masks, rasterize_polygon, save_hrh
from .metrics import (
    HeatmapScorer,
    auc,
    bootstrap_ci,
    compare_with_hrh,
    dice_top,
    iou_top,
    mask_metrics,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    resize_map,
    spearman,
    threshold_hrh,
)
from .selection import (
    OUTLIER_RULES,
    choice_counts,
    find_outliers,
    participant_means,
    selection_counts,
    switch_agreement,
    switch_frame_from_result,
)

__all__ = [
    "evaluate_study", "find_heatmaps", "find_study_image", "render_report",
    "ExportError", "ParseIssue", "Participant", "Polygon", "StudyExport", "read_export", "write_export",
    "compute_hrh", "leave_one_out_hrhs", "participant_mask", "participant_masks", "rasterize_polygon", "save_hrh",
    "HeatmapScorer", "auc", "bootstrap_ci", "compare_with_hrh", "dice_top", "iou_top", "mask_metrics",
    "pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy", "resize_map", "spearman",
    "threshold_hrh",
    "OUTLIER_RULES", "choice_counts", "find_outliers", "participant_means", "selection_counts",
    "switch_agreement", "switch_frame_from_result",
]
