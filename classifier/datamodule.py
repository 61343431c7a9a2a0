"""LightningDataModule over :class:`CelebHQAttrDataset` (CelebA-HQ LMDB or a toyfaces folder)."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from classifier.dataset import CelebHQAttrDataset


class CelebHQDataModule(pl.LightningDataModule):
    """Train/val/test loaders with the seed's split; flips on the training split only.

    Parameters
    ----------
    data_path : the LMDB (``celebahq256.lmdb``) or a toyfaces folder (then ``attr_path`` may be
        omitted: the folder holds both files).
    attr_path : ``CelebAMask-HQ-attribute-anno.txt``.
    image_size : model input size (images are resized/cropped to it).
    toy_make : when ``data_path`` is a toyfaces folder that does not exist yet, render it with
        this many images (``toy_seed`` seeds it) instead of failing.
    """

    def __init__(self, data_path: str, attr_path: str | None = None, image_size: int = 256,
                 batch_size: int = 64, num_workers: int = 0, toy_make: int = 0, toy_seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.data_path, self.attr_path = data_path, attr_path
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.toy_make, self.toy_seed = toy_make, toy_seed

    def _paths(self):
        p = Path(self.data_path)
        if p.suffix != ".lmdb" and self.attr_path is None:
            import toyfaces
            if not toyfaces.is_complete(p):
                if not self.toy_make:
                    raise FileNotFoundError(f"no dataset at {p} (set toy_make: N to render a toy one)")
                toyfaces.make_dataset(p, n=self.toy_make, seed=self.toy_seed, size=self.image_size)
            return toyfaces.paths(p)
        if self.attr_path is None:
            raise ValueError("attr_path (CelebAMask-HQ-attribute-anno.txt) is required with an LMDB")
        return Path(self.data_path), Path(self.attr_path)

    def prepare_data(self):
        self._paths()

    def setup(self, stage=None):
        lmdb_path, attr_path = self._paths()
        mk = lambda split: CelebHQAttrDataset(lmdb_path, attr_path, split=split,  # noqa: E731
                                              image_size=self.image_size)
        self.train_set, self.val_set, self.test_set = mk("train"), mk("val"), mk("test")

    def _loader(self, ds, shuffle):
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          drop_last=False)

    def train_dataloader(self):
        return self._loader(self.train_set, True)

    def val_dataloader(self):
        return self._loader(self.val_set, False)

    def test_dataloader(self):
        return self._loader(self.test_set, False)
