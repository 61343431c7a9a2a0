"""The ``ldvce`` command line (``ldvce/cli.py``; its option machinery in ``ldvce/cliparse.py``).

Nothing else lives here: pipelines and experiments are in ``experiments/``, benchmarks in
``benchmarks/``, and the command functions import them when they run. Importing ``ldvce``
imports ``toyfaces``, which registers the toy LDM (``--ldm toy``) and the toy classifiers
(``--classifier toy_resnet`` …); that import loads no torch, so ``ldvce --help`` stays instant.
"""
import toyfaces  # noqa: F401  (registers load_ldm("toy") and the toy classifier names)
