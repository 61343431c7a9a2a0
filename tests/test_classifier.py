import subprocess
import sys

import pytest
import torch

from classifier import LinearClassifier, ResNet50Classifier, ResNetClassifier, load_classifier
from classifier.models import CheckpointMismatchError, export_safetensors, receptive_field
from tests.conftest import REPO


def test_models_shapes_and_input_size_from_config():
    r = ResNetClassifier(arch="resnet18", image_size=64)
    assert r(torch.randn(2, 3, 64, 64)).shape == (2, 40)
    lin = LinearClassifier(input_dim=(3, 32, 32))
    assert lin(torch.randn(2, 3, 32, 32)).shape == (2, 40)
    assert isinstance(lin.net[1], torch.nn.Dropout) and lin.net[2].in_features == 3 * 32 * 32


def _config_model(name):
    import yaml
    cfg = yaml.safe_load((REPO / "configs" / "classifier" / name).read_text())["model"]
    assert cfg["class_path"] == "classifier.models.ResNetClassifier"
    return ResNetClassifier(**cfg["init_args"])


def test_toy_resnet_geometry_local_evidence_vs_plain_resnet():
    """The toy ResNet's config gives what its comment promises: an 8×8 last grid at 64², a
    23-pixel receptive field and a max-pooled head; the oracle stays a plain stride-32 ResNet18
    whose last cells see far beyond the image (as ResNet50 does at 256², 427 px)."""
    toy, oracle = _config_model("toy_resnet.yaml"), _config_model("toy_oracle.yaml")
    feats = {}
    toy.net.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("grid", o.shape[-2:]))
    assert toy(torch.randn(2, 3, 64, 64)).shape == (2, 40)
    assert tuple(feats["grid"]) == (8, 8)
    assert isinstance(toy.net.avgpool, torch.nn.AdaptiveMaxPool2d)
    assert receptive_field(toy.net, 256) == 23
    assert receptive_field(oracle.net, 1024) > 400
    assert receptive_field(ResNetClassifier().net, 1024) == 427
    assert "pool=max" in toy.architecture and "output_stride=8" in toy.architecture


@pytest.mark.parametrize("bad", [{"output_stride": 4}, {"pool": "median"},
                                 {"pointwise_stages": ["layer9"]},
                                 {"arch": "resnet10", "pretrained": True}, {"width": 0},
                                 {"width": 16, "pretrained": True}])
def test_resnet_geometry_options_are_checked(bad):
    with pytest.raises(ValueError):
        ResNetClassifier(**{"arch": "resnet18", **bad})


def _train_tiny(tmp_path, config, extra=()):
    cmd = [sys.executable, str(REPO / "classifier" / "train_classifier.py"), "--config",
           str(REPO / "configs" / "classifier" / config), "--data.data_path", str(tmp_path / "data"),
           "--data.make_n", "160", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
           "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
           "--data.batch_size", "16", "--trainer.default_root_dir", str(tmp_path / "run"),
           "--trainer.enable_progress_bar", "false", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpts = sorted((tmp_path / "run").rglob("*.ckpt"))
    assert any(c.name == "last.ckpt" for c in ckpts) and any(c.name.startswith("best") for c in ckpts)
    return [c for c in ckpts if c.name.startswith("best")][0]


def test_checkpoint_reloads_in_fresh_process_with_identical_logits(tmp_path):
    ckpt = _train_tiny(tmp_path, "toy_linear.yaml", ["--export", str(tmp_path / "m.safetensors")])
    model = load_classifier(ckpt)
    x = torch.linspace(-1, 1, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64)
    torch.save(x, tmp_path / "x.pt")
    ref = model(x)
    code = ("import os, torch; os.environ['HF_HUB_OFFLINE']='1';"
            "from classifier.models import load_classifier;"
            f"m = load_classifier(r'{ckpt}'); s = load_classifier(r'{tmp_path / 'm.safetensors'}');"
            f"x = torch.load(r'{tmp_path / 'x.pt'}'); torch.save((m(x), s(x)), r'{tmp_path / 'y.pt'}')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={"PATH": "", "HF_HUB_OFFLINE": "1", "NO_PROXY": "*", "http_proxy": "http://0.0.0.0:9",
                        "https_proxy": "http://0.0.0.0:9", "OMP_NUM_THREADS": "1"})
    y_ckpt, y_st = torch.load(tmp_path / "y.pt")
    assert torch.equal(ref, y_ckpt) and torch.equal(ref, y_st)


def test_wrong_architecture_or_class_count_names_both(tmp_path):
    r = ResNetClassifier(arch="resnet18", image_size=64)
    p = export_safetensors(r, tmp_path / "r.safetensors")
    with pytest.raises(CheckpointMismatchError) as e:
        load_classifier(p, expect="LinearClassifier")
    assert "ResNetClassifier" in str(e.value) and "LinearClassifier" in str(e.value)
    with pytest.raises(CheckpointMismatchError) as e:
        load_classifier(p, num_classes=10)
    assert "num_classes=40" in str(e.value) and "num_classes=10" in str(e.value)
    with pytest.raises(CheckpointMismatchError) as e:
        load_classifier(p, arch="resnet50")
    assert "resnet18" in str(e.value) and "resnet50" in str(e.value)
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "missing.ckpt")


def test_unreadable_checkpoints_are_named(tmp_path):
    """Truncated, foreign or non-checkpoint files, and folders, give an error naming the file."""
    from safetensors.torch import save_file
    r = export_safetensors(ResNetClassifier(arch="resnet18", image_size=64), tmp_path / "r.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(r.read_bytes()[:100])
    (tmp_path / "text.ckpt").write_text("garbage\n")
    torch.save({"weights": 1}, tmp_path / "nostate.ckpt")
    save_file({"conv.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    for name, says in (("cut.safetensors", "not a readable classifier checkpoint"),
                       ("text.ckpt", "not a readable classifier checkpoint"),
                       ("nostate.ckpt", "no state_dict"),
                       ("other.safetensors", "no LinearClassifier output layer")):
        with pytest.raises(ValueError, match=says) as e:
            load_classifier(tmp_path / name)
        assert name in str(e.value)
    with pytest.raises(FileNotFoundError, match="is a folder"):
        load_classifier(tmp_path)


def test_ddp_on_cpu_with_two_processes(tmp_path):
    _train_tiny(tmp_path, "toy_resnet.yaml",
                ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                 "--logger", "none"])


def test_wandb_logger_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    _train_tiny(tmp_path, "toy_linear.yaml", ["--logger", "wandb", "--test_after_fit", "false"])
    assert list((tmp_path / "run").rglob("offline-run-*"))


def test_evaluate_command_and_misclassified_export(tmp_path, toy_unseen, toy_resnet_ckpt, capsys):
    from ldvce.cli import main
    out = tmp_path / "mis"
    main(["classifier", "evaluate", str(toy_resnet_ckpt), "--data", str(toy_unseen), "--split", "all",
          "--export-misclassified", str(out), "--device", "cpu"])
    text = capsys.readouterr().out
    assert "Smiling" in text and "<==" in text
    for f in out.glob("*.png"):
        idx, gt, tag = f.stem.split("_")
        assert tag == "misclassified" and gt in ("0.0", "1.0") and idx.isdigit()
    with pytest.raises(SystemExit, match="checkpoint not found: .*nope.ckpt"):
        main(["classifier", "evaluate", str(tmp_path / "nope.ckpt"), "--data", str(toy_unseen)])


def test_narrow_resnet_keeps_the_geometry_at_a_fraction_of_the_weights():
    """``width`` scales the channels only: a width-16 ResNet18 (the toy oracle) has 1/16 of the
    convolution weights, the same stages, strides and receptive field as torchvision's."""
    wide, narrow = ResNetClassifier(arch="resnet18"), ResNetClassifier(arch="resnet18", width=16)
    n_params = lambda m: sum(p.numel() for p in m.net.parameters())  # noqa: E731
    assert n_params(narrow) == 707256 and n_params(wide) > 15 * n_params(narrow)
    assert [narrow.net.layer4[0].conv1.out_channels, narrow.net.fc.in_features] == [128, 128]
    assert receptive_field(narrow.net, 1024) == receptive_field(wide.net, 1024) == 435
    assert narrow(torch.randn(2, 3, 64, 64)).shape == (2, 40)
    assert "width=16" in narrow.architecture and "width" not in wide.architecture
    small = ResNetClassifier(arch="resnet10", stem="small", width=8)
    assert small.net.conv1.out_channels == 8 and small(torch.randn(2, 3, 32, 32)).shape == (2, 40)


def test_the_former_class_name_still_loads(tmp_path):
    """``ResNet50Classifier`` (the seed's name) is an alias: YAML configs naming it instantiate,
    and checkpoints saved under it (safetensors metadata, Lightning .ckpt) load."""
    from jsonargparse import ArgumentParser
    from classifier.models import AttributeClassifier, CLASS_ALIASES
    assert ResNet50Classifier is ResNetClassifier and CLASS_ALIASES["ResNet50Classifier"]
    parser = ArgumentParser()
    parser.add_subclass_arguments(AttributeClassifier, "model")
    cfg = parser.parse_object({"model": {"class_path": "classifier.models.ResNet50Classifier",
                                         "init_args": {"arch": "resnet10", "image_size": 32}}})
    model = parser.instantiate_classes(cfg).model
    assert isinstance(model, ResNetClassifier) and model.hparams.arch == "resnet10"

    x = torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
    ref = model.eval()(x)
    # an export from before the rename: the class recorded as "ResNet50Classifier"
    from safetensors.torch import load_file, save_file
    new = export_safetensors(model, tmp_path / "new.safetensors")
    import json
    from safetensors import safe_open
    with safe_open(str(new), framework="pt") as f:
        meta = dict(f.metadata())
    assert meta["class"] == "ResNetClassifier"
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(new)), str(old), metadata={**meta, "class": "ResNet50Classifier"})
    # a Lightning checkpoint of the old class: hyper-parameters without ``width``
    hp = {k: v for k, v in json.loads(meta["hyper_parameters"]).items() if k != "width"}
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hp}, ckpt)
    for path in (old, ckpt):
        for expect in (None, "ResNet50Classifier", "ResNetClassifier"):
            loaded = load_classifier(path, expect=expect)
            assert type(loaded) is ResNetClassifier and torch.equal(loaded(x), ref)


def test_dataset_folder_convention(tmp_path):
    """A dataset folder is any folder with one ``*.lmdb`` and the attribute file; an LMDB alone
    needs the attribute file named; what is wrong is said."""
    import shutil
    import toyfaces
    from classifier.dataset import ATTRIBUTE_FILE, dataset_files
    from classifier.evaluate import dataset_for
    folder = toyfaces.make_dataset(tmp_path / "toy", n=20, seed=3, progress=False)
    other = tmp_path / "mine"
    other.mkdir()
    shutil.copytree(folder / "toyfaces.lmdb", other / "faces.lmdb")
    shutil.copy(folder / ATTRIBUTE_FILE, other / ATTRIBUTE_FILE)
    assert dataset_files(other) == (other / "faces.lmdb", other / ATTRIBUTE_FILE)
    assert dataset_files(folder) == toyfaces.paths(folder)
    ds = dataset_for(other, split="all")
    assert len(ds) == 20 and ds[0]["img"].shape == (3, 64, 64)
    assert dataset_files(other / "faces.lmdb", other / ATTRIBUTE_FILE)[0] == other / "faces.lmdb"
    with pytest.raises(ValueError, match="attribute file"):
        dataset_files(other / "faces.lmdb")
    shutil.copytree(folder / "toyfaces.lmdb", other / "second.lmdb")
    with pytest.raises(FileNotFoundError, match="exactly one .*faces.lmdb, second.lmdb"):
        dataset_files(other)
    (folder / ATTRIBUTE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="no attribute file"):
        dataset_files(folder)
    with pytest.raises(FileNotFoundError, match="no dataset at"):
        dataset_files(tmp_path / "missing")


def test_datamodule_renders_missing_data_with_the_named_function(tmp_path):
    from classifier.datamodule import CelebHQDataModule
    dm = CelebHQDataModule(str(tmp_path / "d"), image_size=64, make_with="toyfaces.make_dataset",
                           make_n=30, make_seed=2)
    dm.setup()
    assert len(dm.train_set) == 24 and len(dm.test_set) == 3
    with pytest.raises(FileNotFoundError, match="make_with"):
        CelebHQDataModule(str(tmp_path / "none")).setup()
    with pytest.raises(ValueError, match="cannot import 'toyfaces.nope'"):
        CelebHQDataModule(str(tmp_path / "none"), make_with="toyfaces.nope", make_n=5).setup()
