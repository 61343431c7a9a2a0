"""The ``ldvce`` command and the orchestration of the other packages (demo, reports, benchmarks).

Importing ``ldvce`` imports ``toyfaces``, which registers the toy LDM (``--ldm toy``) with
``dvce.ldm``; that import loads no torch, so ``ldvce --help`` stays instant.
"""
import toyfaces  # noqa: F401  (registers load_ldm("toy"))
