"""Train a CelebA-HQ attribute classifier (the seed's entry point).

    python classifier/train_classifier.py --config configs/classifier/celebahq_resnet50.yaml \
        --data.data_path /data/celebahq256.lmdb --data.attr_path /data/CelebAMask-HQ-attribute-anno.txt

Options are LightningCLI's (``--help`` lists them all) plus ``--logger csv|wandb|none`` and
``--export model.safetensors``.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classifier.train import main  # noqa: E402

if __name__ == "__main__":
    main()
