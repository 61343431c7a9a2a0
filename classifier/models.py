"""The classifiers the counterfactuals explain: LinearClassifier (the seed's MLP) and
ResNetClassifier (torchvision ResNet10/18/34/50 with a 40-way head), as LightningModules.

Both take [-1, 1] images and return 40 logits (multi-label, BCE with logits).
``ResNet50Classifier`` is the seed's name of ``ResNetClassifier``; it stays an alias, so YAML
configs (``class_path: classifier.models.ResNet50Classifier``) and checkpoints saved under it load.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn
from torchmetrics.classification import MultilabelAUROC, MultilabelStatScores
from torchvision.models import resnet as tv

from classifier.attributes import ATTRIBUTES, NUM_ATTRIBUTES
from fileio import atomic_write_bytes


class AttributeClassifier(pl.LightningModule):
    """Shared training/evaluation logic; subclasses build ``self.net``."""

    def __init__(self, num_classes: int = NUM_ATTRIBUTES, lr: float = 1e-4,
                 weight_decay: float = 0.01, highlight: str = "Smiling"):
        super().__init__()
        self.num_classes = num_classes
        self.highlight = highlight
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.unreadable_records: dict[int, str] = {}  # row -> reason, filled by _readable
        self._metrics = nn.ModuleDict({
            stage: nn.ModuleDict({
                "stats": MultilabelStatScores(num_labels=num_classes, average=None),
                "auroc": MultilabelAUROC(num_labels=num_classes, average=None),
            }) for stage in ("val", "test")})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr,
                               weight_decay=self.hparams.weight_decay)
        if self.hparams.get("lr_schedule", "constant") == "cosine":
            epochs = max(1, int(self.trainer.max_epochs or 1))
            return {"optimizer": opt,
                    "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)}
        return opt

    def _readable(self, batch) -> bool:
        """Warn once per unreadable record the loader left out of ``batch`` (see
        :func:`classifier.dataset.collate_readable`); False when nothing readable is left."""
        seen = self.unreadable_records
        for row, reason in batch.get("unreadable", []):
            if row not in seen:
                seen[row] = reason
                print(f"warning: left out an unreadable record: {reason}", file=sys.stderr)
        return len(batch["img"]) > 0

    def training_step(self, batch, batch_idx):
        if not self._readable(batch):
            return None  # Lightning skips the optimiser step
        logits = self(batch["img"])
        loss = self.loss_fn(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def _eval_step(self, batch, stage):
        if not self._readable(batch):
            return
        logits = self(batch["img"])
        loss = self.loss_fn(logits, batch["labels"])
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=len(logits), sync_dist=True)
        target = batch["labels"].long()
        m = self._metrics[stage]
        m["stats"].update(logits, target)
        m["auroc"].update(logits, target)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, stage):
        m = self._metrics[stage]
        table = attribute_table(m["stats"].compute(), m["auroc"].compute())
        m["stats"].reset(); m["auroc"].reset()
        hi = self.highlight if self.num_classes == NUM_ATTRIBUTES else None
        for key in ("accuracy", "balanced_accuracy", "auroc"):
            vals = torch.tensor([row[key] for row in table.values()])
            self.log(f"{stage}/{key}_mean", vals.nanmean(), sync_dist=True)
            if hi is not None:
                self.log(f"{stage}/{key}_{hi}", float(table[hi][key]), prog_bar=key == "accuracy",
                         sync_dist=True)
        self.last_table = table

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")


def attribute_table(stats: torch.Tensor, auroc: torch.Tensor | None = None) -> dict:
    """Per-attribute accuracy, balanced accuracy and AUROC from torchmetrics stat scores.

    ``stats`` is (num_labels, 5) = tp, fp, tn, fn, support. Balanced accuracy is the mean of the
    true-positive and true-negative rates; NaN where a class never occurs (AUROC likewise).
    """
    tp, fp, tn, fn = (stats[:, i].double() for i in range(4))
    acc = (tp + tn) / (tp + fp + tn + fn)
    tpr = tp / (tp + fn)
    tnr = tn / (tn + fp)
    bacc = torch.where((tp + fn) == 0, tnr, torch.where((tn + fp) == 0, tpr, (tpr + tnr) / 2))
    names = ATTRIBUTES if len(stats) == NUM_ATTRIBUTES else [str(i) for i in range(len(stats))]
    out = {}
    for i, name in enumerate(names):
        valid = (tp[i] + fn[i]) > 0 and (tn[i] + fp[i]) > 0
        out[name] = {"accuracy": float(acc[i]), "balanced_accuracy": float(bacc[i]),
                     "auroc": float(auroc[i]) if auroc is not None and valid else float("nan"),
                     "positives": int(tp[i] + fn[i]), "n": int(tp[i] + fp[i] + tn[i] + fn[i])}
    return out


class LinearClassifier(AttributeClassifier):
    """The seed's MLP: flatten -> Dropout(0.5) -> Linear(in, 1024) -> ReLU -> Linear(1024, C).

    ``input_dim`` is the image shape (C, H, W) or an image size (int) for 3-channel squares.
    """

    def __init__(self, input_dim=(3, 256, 256), num_classes: int = NUM_ATTRIBUTES,
                 hidden: int = 1024, lr: float = 1e-4, weight_decay: float = 0.01,
                 highlight: str = "Smiling", lr_schedule: str = "constant"):
        super().__init__(num_classes, lr, weight_decay, highlight)
        if isinstance(input_dim, int):
            input_dim = (3, input_dim, input_dim)
        input_dim = tuple(int(v) for v in input_dim)
        self.save_hyperparameters({"input_dim": list(input_dim), "num_classes": num_classes,
                                   "hidden": hidden, "lr": lr, "weight_decay": weight_decay,
                                   "highlight": highlight, "lr_schedule": lr_schedule})
        n_in = input_dim[0] * input_dim[1] * input_dim[2]
        self.net = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(n_in, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    @property
    def architecture(self) -> str:
        return f"LinearClassifier(input_dim={tuple(self.hparams.input_dim)})"


RESNET_ARCHS = ("resnet50", "resnet18", "resnet34", "resnet10")
STAGES = ("layer1", "layer2", "layer3", "layer4")


class ResNetClassifier(AttributeClassifier):
    """torchvision ResNet (resnet50 by default; resnet10/18/34 for the toy world) with a C-way head.

    ``pretrained`` loads torchvision's ImageNet weights *only if* they are already in the local
    torch cache; training never requires them and loading a checkpoint never touches the network.

    Geometry options (defaults give the plain torchvision network):

    - ``stem="small"``: a 3×3 first convolution (stride 2) for small images.
    - ``output_stride`` 32, 16 or 8: the last stages keep their input grid (no dilation), so the
      final feature map is 8×8 at 64² with ``output_stride=8`` — the grid ResNet50 has at 256².
    - ``pool="max"``: global max pooling instead of average pooling before the head.
    - ``pointwise_stages``: stages whose 3×3 convolutions become 1×1, as in BagNet (Brendel &
      Bethge, ICLR 2019). This bounds the receptive field, so each final cell (and the decision)
      is built from local evidence only.
    - ``width``: channels of the stem and ``layer1`` (doubled at each later stage); torchvision's
      64 by default. A narrower network keeps the architecture (depth, strides, receptive field)
      at a fraction of the weights, e.g. the shipped toy oracle (ResNet18, width 16).
    """

    def __init__(self, num_classes: int = NUM_ATTRIBUTES, arch: str = "resnet50",
                 pretrained: bool = False, image_size: int = 256, lr: float = 1e-4,
                 weight_decay: float = 0.01, highlight: str = "Smiling", stem: str = "imagenet",
                 lr_schedule: str = "constant", output_stride: int = 32, pool: str = "avg",
                 pointwise_stages: list[str] | None = None, width: int = 64):
        super().__init__(num_classes, lr, weight_decay, highlight)
        if arch not in RESNET_ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {RESNET_ARCHS}")
        if stem not in ("imagenet", "small"):
            raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        pointwise_stages = list(pointwise_stages or [])
        unknown = [s for s in pointwise_stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown pointwise_stages {unknown}; choose from {STAGES}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        if pretrained and (arch == "resnet10" or pointwise_stages or width != 64):
            raise ValueError("ImageNet weights exist only for the unmodified resnet18/34/50")
        self.save_hyperparameters({"num_classes": num_classes, "arch": arch, "pretrained": pretrained,
                                   "image_size": image_size, "lr": lr, "weight_decay": weight_decay,
                                   "highlight": highlight, "stem": stem,
                                   "lr_schedule": lr_schedule, "output_stride": output_stride,
                                   "pool": pool, "pointwise_stages": pointwise_stages,
                                   "width": width})
        net = _torchvision_resnet(arch, width)
        if pretrained:
            _load_imagenet_if_cached(net, arch)
        if stem == "small":
            # Small images (the 64² toy world): a 3×3 first convolution instead of 7×7 at the same
            # stride, so one first-layer unit (and LRP's Flat rule on it) covers a mouth-sized patch.
            net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=2, padding=1, bias=False)
        _set_output_stride(net, output_stride)
        for stage in pointwise_stages:
            _make_pointwise(getattr(net, stage))
        if pool == "max":
            net.avgpool = nn.AdaptiveMaxPool2d(1)  # torchvision's forward calls it "avgpool"
        net.fc = nn.Linear(net.fc.in_features, num_classes)
        self.net = net

    @property
    def architecture(self) -> str:
        hp = self.hparams
        extra = "".join(f", {k}={hp.get(k)}" for k, default in
                        (("output_stride", 32), ("pool", "avg"), ("pointwise_stages", []),
                         ("width", 64))
                        if hp.get(k, default) != default)
        return f"ResNetClassifier(arch={hp.arch}{extra})"


#: The seed's name of :class:`ResNetClassifier` (configs and checkpoints that use it still load).
ResNet50Classifier = ResNetClassifier

_RESNET_BLOCKS = {"resnet10": ("BasicBlock", [1, 1, 1, 1]), "resnet18": ("BasicBlock", [2, 2, 2, 2]),
                  "resnet34": ("BasicBlock", [3, 4, 6, 3]), "resnet50": ("Bottleneck", [3, 4, 6, 3])}


def _torchvision_resnet(arch: str, width: int = 64) -> nn.Module:
    """torchvision's ResNet of ``arch`` (resnet10: one BasicBlock per stage, a class torchvision
    has without the name) with ``width`` channels in the stem and ``layer1``."""
    block, layers = _RESNET_BLOCKS[arch]
    block = getattr(tv, block)
    net = tv.ResNet(block, layers) if arch == "resnet10" else getattr(torchvision.models, arch)(weights=None)
    if width != 64:
        # torchvision fixes the widths at 64·2^k; rebuild stem, stages and head narrower with its
        # own stage builder and initialisation, so only the channel counts differ.
        net.inplanes = width
        net.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        net.bn1 = net._norm_layer(width)
        for i, n_blocks in enumerate(layers):
            setattr(net, f"layer{i + 1}", net._make_layer(block, width * 2 ** i, n_blocks,
                                                         stride=1 if i == 0 else 2))
        net.fc = nn.Linear(width * 8 * block.expansion, net.fc.out_features)
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
    return net


def _set_output_stride(net: nn.Module, output_stride: int) -> None:
    """Drop the stride of layer4 (then layer3) until the network's total stride is output_stride.

    No dilation (unlike DeepLab): the receptive field shrinks with the stride, which is the point
    for small images, where a stride-32 ResNet's last grid is 2×2 and each cell sees everything.
    """
    stride = 32
    for stage in (net.layer4, net.layer3):
        if stride <= output_stride:
            break
        for m in stage[0].modules():
            if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                m.stride = (1, 1)
        stride //= 2


def _make_pointwise(stage: nn.Module) -> None:
    """Replace every 3×3 convolution of a stage's blocks by a 1×1 one with the same stride."""
    for block in stage:
        for name, m in list(block.named_children()):
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                setattr(block, name, nn.Conv2d(m.in_channels, m.out_channels, kernel_size=1,
                                               stride=m.stride, padding=0, bias=False))


def receptive_field(net: nn.Module, image_size: int) -> int:
    """Width in pixels of the input region that reaches the centre cell of ``net``'s last stage
    (measured with a gradient, so it holds for any stem, stride or pointwise setting)."""
    # a random image keeps ReLUs open on every path (an all-zero one can close them all)
    gen = torch.Generator().manual_seed(0)
    param = next(net.parameters())
    x = torch.randn(1, 3, image_size, image_size, generator=gen).to(param)
    x.requires_grad_(True)
    feats = {}
    handle = net.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("out", o))
    was_training = net.training
    try:
        net.eval()
        net(x)
        out = feats["out"]
        h, w = out.shape[-2:]
        (g,) = torch.autograd.grad(out[0, :, h // 2, w // 2].sum(), x)
    finally:
        handle.remove()
        net.train(was_training)
    cols = torch.nonzero(g.abs().sum((0, 1, 2)) > 0)
    return int(cols.max() - cols.min() + 1) if len(cols) else 0


def _load_imagenet_if_cached(net: nn.Module, arch: str) -> None:
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cache.exists():
        raise FileNotFoundError(f"ImageNet weights for {arch} are not cached at {cache}; train "
                                f"without them (pretrained: false) or place the file there")
    net.load_state_dict(torch.load(cache, map_location="cpu"))


CLASSIFIERS = {"LinearClassifier": LinearClassifier, "ResNetClassifier": ResNetClassifier}
#: Former class names -> current ones (checkpoints and configs keep their recorded name).
CLASS_ALIASES = {"ResNet50Classifier": "ResNetClassifier"}


def canonical_class(name: str) -> str:
    """The current name of a classifier class given any name it was saved under."""
    return CLASS_ALIASES.get(name, name)


class CheckpointMismatchError(ValueError):
    """A checkpoint holds another architecture or class count than the one requested."""


def _describe(cls_name: str, hp: dict) -> str:
    keys = {"LinearClassifier": ("input_dim", "num_classes"),
            "ResNetClassifier": ("arch", "num_classes", "stem", "width")}.get(cls_name, ("num_classes",))
    return f"{cls_name}(" + ", ".join(f"{k}={hp.get(k)}" for k in keys) + ")"


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The state dict and hyper-parameters of a ``.ckpt`` or ``.safetensors`` file; a file that
    is missing, a folder, truncated or not a checkpoint raises an error that names it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"classifier checkpoint not found: {path}")
    if not path.is_file():
        raise FileNotFoundError(f"classifier checkpoint {path} is a folder, not a file")
    try:
        return _read_checkpoint(path)
    except CheckpointMismatchError:
        raise
    except Exception as e:  # safetensors, pickle and zip errors say nothing about which file
        raise ValueError(f"{path} is not a readable classifier checkpoint "
                         f"({type(e).__name__}: {e})") from e


def _read_checkpoint(path: Path) -> dict:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return {"state_dict": {"net." + k if not k.startswith("net.") else k: v
                               for k, v in load_file(str(path)).items()},
                "hyper_parameters": json.loads(meta.get("hyper_parameters", "{}")),
                "ldvce_class": meta.get("class")}
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if "state_dict" not in ckpt:
        raise CheckpointMismatchError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return ckpt


def checkpoint_class(ckpt: dict) -> str:
    """Which classifier class a checkpoint was saved from (from its keys and hyper-parameters),
    by its current name (``ResNet50Classifier`` checkpoints give ``ResNetClassifier``)."""
    if ckpt.get("ldvce_class"):
        return canonical_class(ckpt["ldvce_class"])
    hp = ckpt.get("hyper_parameters", {})
    if "arch" in hp or any(k.startswith("net.conv1") for k in ckpt["state_dict"]):
        return "ResNetClassifier"
    return "LinearClassifier"


def load_classifier(path: str | os.PathLike, expect: str | None = None, map_location="cpu",
                    **expect_hparams) -> AttributeClassifier:
    """Load a classifier checkpoint (``.ckpt`` from Lightning or exported ``.safetensors``).

    ``expect`` (class name, former names accepted) and ``expect_hparams`` (e.g. ``num_classes=40``, ``arch="resnet50"``)
    are checked against what the checkpoint holds; a mismatch raises
    :class:`CheckpointMismatchError` naming both. The model comes back in eval mode.
    """
    ckpt = read_checkpoint(path)
    found = checkpoint_class(ckpt)
    if found not in CLASSIFIERS:
        raise CheckpointMismatchError(f"{path} holds an unknown classifier class {found!r}; "
                                      f"known: {', '.join(CLASSIFIERS)}")
    expect = canonical_class(expect) if expect is not None else None
    hp = dict(ckpt.get("hyper_parameters", {}))
    sd = ckpt["state_dict"]
    if "num_classes" not in hp:
        head = "net.fc.weight" if found == "ResNetClassifier" else "net.4.weight"
        if head not in sd:
            raise CheckpointMismatchError(f"{path} holds no {found} output layer ({head}): not "
                                          "a checkpoint of this project's classifiers")
        hp["num_classes"] = int(sd[head].shape[0])
    wanted = dict(expect_hparams)
    if "input_dim" in wanted and wanted["input_dim"] is not None:
        wanted["input_dim"] = list(wanted["input_dim"])
    mismatch = (expect is not None and expect != found) or any(
        k in hp and v is not None and hp[k] != v for k, v in wanted.items())
    if mismatch:
        want_desc = _describe(expect or found, {**hp, **wanted})
        raise CheckpointMismatchError(f"{path} holds a {_describe(found, hp)} but a {want_desc} "
                                      f"was requested")
    accepted = inspect.signature(CLASSIFIERS[found]).parameters
    model = CLASSIFIERS[found](**{k: v for k, v in hp.items() if k in accepted})
    try:
        model.load_state_dict({k: v for k, v in sd.items() if k.startswith("net.")}, strict=False)
        missing = [k for k in model.state_dict() if k.startswith("net.") and k not in sd]
        if missing:
            raise RuntimeError(f"missing keys {missing[:3]}")
    except RuntimeError as e:
        raise CheckpointMismatchError(f"{path} does not fit {model.architecture}: {e}") from e
    return model.eval().to(map_location)


def export_safetensors(model: AttributeClassifier, path: str | os.PathLike) -> Path:
    """Save the network weights with the hyper-parameters as metadata (no pickle, no Lightning),
    atomically: a reader (another job loading the same checkpoint) never sees half a file."""
    path = Path(path)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
          if k.startswith("net.")}
    meta = {"class": type(model).__name__, "hyper_parameters": json.dumps(dict(model.hparams))}
    atomic_write_bytes(path, save(sd, metadata=meta))
    return path
