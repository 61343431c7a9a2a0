import subprocess
import sys

import pytest
import torch

from classifier.models import (CheckpointMismatchError, LinearClassifier, ResNet50Classifier,
                               export_safetensors, load_classifier, receptive_field)
from tests.conftest import REPO


def test_models_shapes_and_input_size_from_config():
    r = ResNet50Classifier(arch="resnet18", image_size=64)
    assert r(torch.randn(2, 3, 64, 64)).shape == (2, 40)
    lin = LinearClassifier(input_dim=(3, 32, 32))
    assert lin(torch.randn(2, 3, 32, 32)).shape == (2, 40)
    assert isinstance(lin.net[1], torch.nn.Dropout) and lin.net[2].in_features == 3 * 32 * 32


def _config_model(name):
    import yaml
    cfg = yaml.safe_load((REPO / "configs" / "classifier" / name).read_text())["model"]
    assert cfg["class_path"] == "classifier.models.ResNet50Classifier"
    return ResNet50Classifier(**cfg["init_args"])


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
    assert receptive_field(ResNet50Classifier().net, 1024) == 427
    assert "pool=max" in toy.architecture and "output_stride=8" in toy.architecture


@pytest.mark.parametrize("bad", [{"output_stride": 4}, {"pool": "median"},
                                 {"pointwise_stages": ["layer9"]},
                                 {"arch": "resnet10", "pretrained": True}])
def test_resnet_geometry_options_are_checked(bad):
    with pytest.raises(ValueError):
        ResNet50Classifier(**{"arch": "resnet18", **bad})


def _train_tiny(tmp_path, config, extra=()):
    cmd = [sys.executable, str(REPO / "classifier" / "train_classifier.py"), "--config",
           str(REPO / "configs" / "classifier" / config), "--data.data_path", str(tmp_path / "data"),
           "--data.toy_make", "160", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
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
    r = ResNet50Classifier(arch="resnet18", image_size=64)
    p = export_safetensors(r, tmp_path / "r.safetensors")
    with pytest.raises(CheckpointMismatchError) as e:
        load_classifier(p, expect="LinearClassifier")
    assert "ResNet50Classifier" in str(e.value) and "LinearClassifier" in str(e.value)
    with pytest.raises(CheckpointMismatchError) as e:
        load_classifier(p, num_classes=10)
    assert "num_classes=40" in str(e.value) and "num_classes=10" in str(e.value)
    with pytest.raises(CheckpointMismatchError) as e:
        load_classifier(p, arch="resnet50")
    assert "resnet18" in str(e.value) and "resnet50" in str(e.value)
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "missing.ckpt")


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
