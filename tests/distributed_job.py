"""A two-process generation job for tests/test_distributed.py (run as a script, never imported
by pytest): a tiny random-weight LDM and tests/test_dvce.py's classifier that answers NaN for a
pure white image.

    python tests/distributed_job.py IMAGES OUT

Lightning's ddp launcher starts the second process by running this script again. Test hook:
with ``LDVCE_TEST_DIE_AT_RESULT=k`` the process of local rank 1 kills itself (SIGKILL) while
writing its k-th folder, after the images but before ``result.json``: a crash mid-write.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dvce import runfolder as rf  # noqa: E402
from dvce import runner  # noqa: E402
from dvce.distributed import run_distributed  # noqa: E402
from dvce.ldm import build_random_ldm  # noqa: E402
from toyfaces.ldm import toy_unet_config, toy_vq_config  # noqa: E402
from dvce.samplers import Problem  # noqa: E402
from test_dvce import BrightnessClassifier  # noqa: E402  (this script's folder is on sys.path)

OPTIONS = dict(num_steps=20, t_start=200, retry_scales=())
BATCH_SIZE = 2


def problem() -> Problem:
    ldm = build_random_ldm(toy_vq_config(64), toy_unet_config(16), seed=1)
    return Problem(ldm, BrightnessClassifier(), 31)


def _die_while_writing(k: int) -> None:
    real, seen = rf.write_result, {"n": 0}

    def write_result(folder, result):
        if os.environ.get("LOCAL_RANK") == "1":
            seen["n"] += 1
            if seen["n"] == k:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(folder, result)

    rf.write_result = write_result


def main(images: str, out: str) -> None:
    if os.environ.get("LDVCE_TEST_DIE_AT_RESULT"):
        _die_while_writing(int(os.environ["LDVCE_TEST_DIE_AT_RESULT"]))
    summary = run_distributed(runner.folder_items(images, 64), problem(), out, "guided",
                              batch_size=BATCH_SIZE, options=OPTIONS, devices=2,
                              accelerator="cpu", strategy="ddp", progress=False)
    if summary is not None:
        print(f"summary: {summary['n']} inputs, {summary['n_generated']} generated", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
