"""The shipped toy classifiers: what ``toy_classifier`` returns, what the files hold, and the
retraining path (``ldvce demo --retrain``)."""
from __future__ import annotations

import os

import pytest
import torch
import yaml

from tests.conftest import REPO


def _config(name):
    return yaml.safe_load((REPO / "configs" / "classifier" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", ["toy_resnet", "toy_oracle", "toy_resnet18"])
def test_shipped_weights_are_what_the_configs_train(name):
    """The shipped file is returned by default, loads without Lightning, and holds the
    architecture its config builds (so ``retrain=True`` trains the same network)."""
    from classifier import ResNetClassifier, load_classifier
    from toyfaces.world import shipped_classifier, toy_classifier
    path = toy_classifier(name)
    assert path == shipped_classifier(name) and path.suffix == ".safetensors"
    model = load_classifier(path)
    cfg = _config(name)["model"]
    assert cfg["class_path"] == "classifier.models.ResNetClassifier"
    for k, v in cfg["init_args"].items():
        assert model.hparams[k] == v, k
    assert isinstance(model, ResNetClassifier)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 40)


def test_shipped_weights_are_small_and_the_oracle_is_unrelated():
    from classifier import load_classifier
    from classifier.models import receptive_field
    from toyfaces.world import shipped_classifier
    sizes = {n: shipped_classifier(n).stat().st_size for n in ("toy_resnet", "toy_oracle")}
    assert sum(sizes.values()) < 10e6, sizes
    toy, oracle = (load_classifier(shipped_classifier(n)) for n in ("toy_resnet", "toy_oracle"))
    # BagNet-style local evidence vs a plain stride-32 ResNet18 seeing the whole face
    assert toy.hparams.arch == "resnet10" and toy.hparams.pointwise_stages
    assert oracle.hparams.arch == "resnet18" and not oracle.hparams.get("pointwise_stages")
    assert oracle.hparams.get("output_stride", 32) == 32 and oracle.hparams.get("pool", "avg") == "avg"
    assert receptive_field(toy.net, 256) == 23 and receptive_field(oracle.net, 1024) > 400


def test_retrain_trains_with_the_config_and_caches_the_result(tmp_path, monkeypatch):
    """``retrain=True`` runs the project's training on the toy training data (faked here: the
    real loop is tested in test_classifier.py) and returns the checkpoint it cached."""
    import classifier.train
    from toyfaces import world as toyworld
    monkeypatch.setenv("LDVCE_CACHE", str(tmp_path))
    data = tmp_path / "data" / "toy-train"
    monkeypatch.setattr(toyworld, "toy_data", lambda spec=toyworld.TRAIN_DATA, progress=True: data)
    calls = []

    def fake_train(args):
        calls.append(args)
        best = tmp_path / "best.ckpt"
        best.write_bytes(b"trained")
        return None, None, best

    monkeypatch.setattr(classifier.train, "main", fake_train)
    ckpt = toyworld.toy_classifier("toy_oracle", retrain=True)
    assert ckpt == tmp_path / "models" / "toy_oracle.ckpt" and ckpt.read_bytes() == b"trained"
    args = calls[0]
    assert args[args.index("--config") + 1].endswith("toy_oracle.yaml")
    assert args[args.index("--data.data_path") + 1] == str(data)
    assert toyworld.toy_classifier("toy_oracle") == toyworld.shipped_classifier("toy_oracle")
    with pytest.raises(KeyError, match="toy_resnet"):
        toyworld.toy_classifier("toy_nope")


def test_two_processes_asking_for_an_untrained_classifier_train_it_once(tmp_path, monkeypatch):
    """A second caller waits for the first one's training (a lock beside the checkpoint) and
    takes its checkpoint, instead of training into the same run folder at the same time."""
    import threading
    import time

    import classifier.train
    from toyfaces import world as toyworld
    monkeypatch.setenv("LDVCE_CACHE", str(tmp_path))
    calls = []

    def slow_train(args):
        calls.append(args)
        time.sleep(0.5)
        best = tmp_path / f"best{len(calls)}.ckpt"
        best.write_bytes(b"trained %d" % len(calls))
        return None, None, best

    monkeypatch.setattr(classifier.train, "main", slow_train)
    got = []
    ask = lambda: got.append(toyworld.shipped_or_trained("toy_x", "toy_resnet.yaml",  # noqa: E731
                                                         lambda: tmp_path / "data"))
    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and got == [tmp_path / "models" / "toy_x.ckpt"] * 2
    assert got[0].read_bytes() == b"trained 1"


def test_toy_resnet18_is_a_plain_resnet18_unlike_the_oracle():
    """The non-local toy classifier: torchvision's ResNet18 (7×7 stem, stride 32, global average
    pooling) with another width and seed than the oracle's."""
    from classifier import load_classifier
    from classifier.models import receptive_field
    from toyfaces.world import shipped_classifier
    r18 = load_classifier(shipped_classifier("toy_resnet18"))
    assert r18.hparams.arch == "resnet18" and r18.hparams.stem == "imagenet"
    assert r18.hparams.get("pool", "avg") == "avg" and not r18.hparams.get("pointwise_stages")
    assert receptive_field(r18.net, 1024) > 400
    r18_cfg, oracle_cfg = _config("toy_resnet18"), _config("toy_oracle")
    assert r18_cfg["seed_everything"] != oracle_cfg["seed_everything"]
    assert r18_cfg["model"]["init_args"]["width"] != oracle_cfg["model"]["init_args"]["width"]


def test_toy_data_replaces_a_half_made_world_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    """A cache entry an interrupted render left behind (no meta.json) is rendered again whole;
    the render happens beside it (``NAME.partial-PID``) and is moved in complete, so a second
    process never reads a half-made world."""
    import toyfaces
    from toyfaces.world import toy_data
    monkeypatch.setenv("LDVCE_CACHE", str(tmp_path))
    stale = tmp_path / "data" / "tiny"
    stale.mkdir(parents=True)
    (stale / "toyfaces.lmdb").mkdir()  # what a killed render leaves: files without meta.json
    written, make = [], toyfaces.make_dataset

    def recording(out, **kw):  # the cache entry itself must not be written while rendering
        written.append(out)
        assert not toyfaces.is_complete(stale) and (stale / "toyfaces.lmdb").is_dir()
        return make(out, **kw)

    monkeypatch.setattr(toyfaces, "make_dataset", recording)
    path = toy_data(("tiny", 6, 3), progress=False)
    assert path == stale and toyfaces.is_complete(path)
    assert [p.name for p in written] == [f"tiny.partial-{os.getpid()}"]
    assert len(toyfaces.load_factors(path).take(slice(None)).hat) == 6
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["tiny"]
    before = (path / "meta.json").stat().st_mtime_ns
    assert toy_data(("tiny", 6, 3), progress=False) == path  # complete: not rendered again
    assert (path / "meta.json").stat().st_mtime_ns == before
