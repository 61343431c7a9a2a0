"""LightningDataModule over :class:`CelebHQAttrDataset` (an LMDB or a dataset folder)."""
from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from classifier.dataset import CelebHQAttrDataset, collate_readable, dataset_files


def import_callable(dotted: str) -> Callable:
    """The function named by ``"package.module.function"`` (how configs name code)."""
    module, _, name = str(dotted).rpartition(".")
    if not module:
        raise ValueError(f"{dotted!r} is not an import path of the form package.module.function")
    try:
        fn = getattr(import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import {dotted!r}: {e}") from e
    if not callable(fn):
        raise ValueError(f"{dotted!r} is not callable")
    return fn


class CelebHQDataModule(pl.LightningDataModule):
    """Train/val/test loaders with the seed's split; flips on the training split only.

    Parameters
    ----------
    data_path : the LMDB (``celebahq256.lmdb``) or a dataset folder (one ``*.lmdb`` beside
        ``CelebAMask-HQ-attribute-anno.txt``; then ``attr_path`` may be omitted).
    attr_path : ``CelebAMask-HQ-attribute-anno.txt``.
    image_size : model input size (images are resized/cropped to it).
    make_with : import path of a function ``f(folder, n=, seed=, size=)`` that writes a dataset
        folder; called when ``data_path`` does not exist yet, instead of failing (the toy configs
        name ``toyfaces.make_dataset``, which renders the toy world).
    make_n, make_seed : how many images ``make_with`` renders, and its seed.

    A record that is missing or not a readable image is left out of its batch and named once
    on stderr (:func:`classifier.dataset.collate_readable`), so one bad record does not stop a
    long training run.
    """

    def __init__(self, data_path: str, attr_path: str | None = None, image_size: int = 256,
                 batch_size: int = 64, num_workers: int = 0, make_with: str | None = None,
                 make_n: int = 0, make_seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.data_path, self.attr_path = data_path, attr_path
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.make_with, self.make_n, self.make_seed = make_with, make_n, make_seed

    def _paths(self) -> tuple[Path, Path]:
        p = Path(self.data_path)
        try:
            return dataset_files(p, self.attr_path)
        except FileNotFoundError as e:
            if not self.make_with:
                raise FileNotFoundError(f"{e} (set make_with and make_n to render a dataset "
                                        f"there, e.g. make_with: toyfaces.make_dataset)") from e
        if self.make_n <= 0:
            raise ValueError(f"make_with={self.make_with!r} needs make_n > 0 images")
        import_callable(self.make_with)(p, n=self.make_n, seed=self.make_seed, size=self.image_size)
        return dataset_files(p, self.attr_path)

    def prepare_data(self):
        self._paths()

    def setup(self, stage=None):
        lmdb_path, attr_path = self._paths()
        mk = lambda split: CelebHQAttrDataset(lmdb_path, attr_path, split=split,  # noqa: E731
                                              image_size=self.image_size,
                                              skip_unreadable=True)
        self.train_set, self.val_set, self.test_set = mk("train"), mk("val"), mk("test")

    def _loader(self, ds, shuffle):
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          drop_last=False, collate_fn=collate_readable)

    def train_dataloader(self):
        return self._loader(self.train_set, True)

    def val_dataloader(self):
        return self._loader(self.val_set, False)

    def test_dataloader(self):
        return self._loader(self.test_set, False)
