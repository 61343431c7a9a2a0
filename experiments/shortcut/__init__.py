"""The shortcut test (``ldvce shortcut``): edit a suspected cue with counterfactuals guided by
another classifier of that cue (the *editor*), and measure how the explained classifier's
decision moves (FastDiME's shortcut pipeline, in latent space).

Faces without the cue get it added, faces with it get it removed; each edit is a counterfactual
of the editor's cue output. The shift of the explained classifier's target decision (share of
faces whose decision flips, mean change in probability, bootstrap 95 % intervals) is reported
per direction, beside the same edit of a control attribute that should not matter. With an
oracle, edits it does not confirm are counted apart and left out of the statistics.

Modules: :mod:`.edit` (faces and edits), :mod:`.stats` (the shift statistic), :mod:`.figures`,
:mod:`.report` and :mod:`.run` (:func:`~experiments.shortcut.run.run_shortcut`).
"""
