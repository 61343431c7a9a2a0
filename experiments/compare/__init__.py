"""``ldvce xai compare``: which heatmap to trust — attribution methods (:mod:`xai.attributions`)
scored against the toy world's ground truth, by deletion/insertion, by the randomisation test
and against human relevance heatmaps (data.py, scoring.py, figures.py, report.py, run.py)."""
