import numpy as np
import pytest
import torch
from PIL import Image

from classifier import ATTRIBUTES, CelebHQAttrDataset, UnknownAttributeError, attribute_index
from classifier.dataset import read_attribute_file, split_range, write_attribute_file
from classifier.images import load_folder
from ldvce.cli import main


def test_attribute_names_resolve_and_unknown_lists_valid():
    assert attribute_index("Smiling") == 31 and attribute_index(31) == 31
    assert attribute_index("smiling") == 31
    with pytest.raises(UnknownAttributeError) as e:
        attribute_index("Smiley")
    assert "Smiling" in str(e.value) and "Wearing_Hat" in str(e.value)
    with pytest.raises(UnknownAttributeError):
        attribute_index(40)


def test_seed_split_ranges():
    assert split_range("train", 30000) == range(0, 24000)
    assert split_range("val", 30000) == range(24000, 27000)
    assert split_range("test", 30000) == range(27000, 30000)


def test_attribute_file_round_trip(tmp_path):
    lab = np.where(np.random.default_rng(0).random((5, 40)) > 0.5, 1, -1)
    write_attribute_file(tmp_path / "a.txt", lab)
    lines = (tmp_path / "a.txt").read_text().splitlines()
    assert lines[0] == "5" and lines[1].split() == list(ATTRIBUTES) and lines[2].startswith("0.jpg ")
    files, names, back = read_attribute_file(tmp_path / "a.txt")
    assert files[4] == "4.jpg" and np.array_equal(back, lab)


def test_build_lmdb_from_seed_images(shared_dir, tmp_path):
    src = shared_dir / "seed" / "celebahq" / "test_counterfactual"
    out = tmp_path / "celebahq256.lmdb"
    main(["data", "build-lmdb", str(src), str(out), "--size", "256"])
    n = len(list(src.glob("*.png")))
    lab = -np.ones((n, 40), dtype=int)
    lab[:, 31] = 1
    write_attribute_file(tmp_path / "attr.txt", lab)
    ds = CelebHQAttrDataset(out, tmp_path / "attr.txt", split="all")
    assert len(ds) == n == 21 and ds.key_size == 256
    s = ds[0]
    assert s["img"].shape == (3, 256, 256) and s["labels"][31] == 1
    ref = np.asarray(Image.open(sorted(src.glob("*.png"))[0]).convert("RGB"), dtype=np.float32)
    assert np.allclose((s["img"].permute(1, 2, 0).numpy() + 1) * 127.5, ref, atol=0.6)
    names = (out / "filenames.txt").read_text().split()
    assert names[0] == sorted(p.name for p in src.glob("*.png"))[0]


def test_image_folder_with_bad_files(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    (tmp_path / "notes.txt").write_text("hello")
    rgba = np.zeros((40, 50, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray((np.random.default_rng(0).random((200, 300)) * 255).astype(np.uint8), "L") \
        .save(tmp_path / "gray.jpg")
    pal = Image.new("P", (64, 64))
    pal.putpalette([0, 0, 255] * 256)
    pal.save(tmp_path / "palette.png")
    res = load_folder(tmp_path, 64)
    assert sorted(res.ids) == ["gray", "palette", "rgba"]
    assert all(t.shape == (3, 64, 64) and t.dtype == torch.float32 for t in res.images)
    bad = sorted(p.name for p, _ in res.problems)
    assert bad == ["corrupt.png", "notes.txt"]
    assert all(str(p) in msg for p, msg in res.problems)
    rgba_t = res.images[res.ids.index("rgba")]
    # alpha composited on white: red channel 1, green about halfway
    assert torch.allclose(rgba_t[0], torch.ones(64, 64)) and abs(float(rgba_t[1].mean())) < 0.05


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    from classifier.images import load_pil
    out = load_pil(tmp_path / "rot.jpg")
    assert out.size == (20, 40)


def test_lmdb_dataset_is_worker_safe(toy_unseen):
    import toyfaces
    from torch.utils.data import DataLoader
    ds = CelebHQAttrDataset(*toyfaces.paths(toy_unseen), split="train")
    assert ds.augment and not CelebHQAttrDataset(*toyfaces.paths(toy_unseen), split="test").augment
    dl = DataLoader(ds, batch_size=16, num_workers=2)
    batches = list(dl)
    assert sum(len(b["index"]) for b in batches) == len(ds)


def _spoil_records(folder, rows: dict[int, bytes | None]) -> None:
    """Overwrite (bytes) or delete (None) records of a toyfaces LMDB, as a disk error would."""
    import lmdb
    import toyfaces
    from classifier.lmdb_store import close_lmdb, image_key, lmdb_info
    path, _ = toyfaces.paths(folder)
    _, size = lmdb_info(path)
    close_lmdb(path)
    env = lmdb.open(str(path), subdir=True)
    with env.begin(write=True) as txn:
        for row, data in rows.items():
            txn.delete(image_key(size, row)) if data is None else txn.put(image_key(size, row), data)
    env.close()


def test_unreadable_lmdb_records_are_left_out_and_named(tmp_path, toy_resnet_ckpt, capsys):
    """One bad record of a large LMDB must not stop a pass over the rest: `classifier evaluate`,
    training and CRP's global analysis leave it out, name it, and use every other record."""
    import pytorch_lightning as pl
    import toyfaces
    from classifier.datamodule import CelebHQDataModule
    from classifier.dataset import collate_readable
    from classifier.models import LinearClassifier, load_classifier
    from xai.crp import global_analysis
    folder = toyfaces.make_dataset(tmp_path / "toy", n=40, seed=5, progress=False)
    _spoil_records(folder, {3: b"\x89PNG\r\n\x1a\nnot a png", 37: None})

    main(["classifier", "evaluate", str(toy_resnet_ckpt), "--data", str(folder), "--split", "all",
          "--device", "cpu"])
    out = capsys.readouterr()
    assert "<==" in out.out  # the table over the other 38 records
    assert "left out 2 unreadable record(s)" in out.err
    assert "[3]: not a readable image" in out.err and "[37]: no record (key 64-00037 is missing)" in out.err

    ds = CelebHQAttrDataset(*toyfaces.paths(folder), split="all", skip_unreadable=True)
    batch = collate_readable([ds[3], ds[4], ds[37]])
    assert batch["index"].tolist() == [4] and [r for r, _ in batch["unreadable"]] == [3, 37]
    empty = collate_readable([ds[3]])
    assert empty["img"].numel() == 0 and len(empty["unreadable"]) == 1
    with pytest.raises(ValueError, match=r"\[3\]: not a readable image"):
        CelebHQAttrDataset(*toyfaces.paths(folder), split="all")[3]  # the default still raises

    # training: rows 3 (train split) and 37 (test split) are left out of their batches
    dm = CelebHQDataModule(str(folder), image_size=64, batch_size=8)
    model = LinearClassifier(input_dim=[3, 64, 64], hidden=16)
    pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(model, dm)
    assert set(model.unreadable_records) == {3}
    assert capsys.readouterr().err.count("left out an unreadable record") == 1

    r = global_analysis(load_classifier(toy_resnet_ckpt), ds, "Smiling", ["net.layer4"],
                        tmp_path / "crp", n=8, top=1, n_refs=2, figure=False, progress=False)
    assert r["n"] == 7 and [u["row"] for u in r["unreadable"]] == [3]
    assert 3 not in r["layers"]["net.layer4"][0]["reference_rows"]
