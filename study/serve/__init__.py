"""The study web app: ``ldvce study serve RUN_DIR … --db study.sqlite``.

Modules: :mod:`.design` (configuration, trials from run folders), :mod:`.store` (SQLite),
:mod:`.app` (routes and validation), :mod:`.results` (export and progress), :mod:`.server`
(the command). The pages are plain HTML/JS/CSS in ``templates/`` and ``static/``. Needs Flask and
waitress, no torch.
"""
from .design import Study, StudyConfigError, StudyImage, build_study, load_config, pick_frames

__all__ = ["Study", "StudyConfigError", "StudyImage", "build_study", "load_config", "pick_frames"]
