"""Architectures of the published protocol's networks, so their weight files load here.

- :class:`FIDInceptionV3`: the Inception-v3 of pytorch-fid (TF-FID port: 1008 classes, the
  ``FIDInception*`` blocks whose pooling differs from torchvision's). Loads
  ``pt_inception-2015-12-05-6726825d.pth`` (a state dict of ``Inception3`` key names).
- :class:`VGGFace2ResNet50`: the VGGFace2 ResNet-50 (Cao et al. 2018) of ``compute_FVA.py``,
  Caffe-style (stride on the first 1×1 of a bottleneck), loaded from the authors' pickle
  ``resnet50_ft_weight.pkl`` (name → numpy array).
- :class:`SteexOracle`: the 40-attribute CelebA-HQ oracle of STEEX/ACE (``OracleResnet``): a
  VGGFace2 ``Resnet50_ft_dag`` (MatConvNet-converted key names such as ``conv2_1_1x1_reduce``)
  with a ``Linear(2048, 40)`` head and sigmoid; checkpoint ``{'model_state_dict': …}``.

Each loader raises :class:`WeightsError` naming the file and what did not fit.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


class WeightsError(FileNotFoundError):
    """A protocol network's weight file is absent or does not fit its architecture."""


def require_file(path, what: str, hint: str) -> Path:
    """``path`` as a Path if it is a file, else :class:`WeightsError` naming it and how to get it."""
    if path is None or str(path) == "":
        raise WeightsError(f"{what}: no weight file given ({hint})")
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise WeightsError(f"{what}: weight file not found: {p} ({hint})")
    return p


def _load_strict(module: nn.Module, state: dict, path, what: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        raise WeightsError(f"{path} does not fit the {what} architecture: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}, wrong shapes {bad[:3]} "
                           f"({len(missing)}/{len(unexpected)}/{len(bad)})")
    module.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=False)


# ------------------------------------------------------------------ pytorch-fid Inception-v3
def _fid_blocks():
    # heavy: torchvision (~2 s), only the Inception network needs it
    from torchvision.models.inception import InceptionA, InceptionC, InceptionE

    class FIDInceptionA(InceptionA):
        """InceptionA with the TF graph's average pooling (padding not counted)."""

        def _forward(self, x):
            b1 = self.branch1x1(x)
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
            return [b1, b5, b3, bp]

    class FIDInceptionC(InceptionC):
        def _forward(self, x):
            b1 = self.branch1x1(x)
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            bd = x
            for name in ("branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4",
                         "branch7x7dbl_5"):
                bd = getattr(self, name)(bd)
            bp = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
            return [b1, b7, bd, bp]

    class FIDInceptionE(InceptionE):
        """InceptionE; the last block (``Mixed_7c``) max-pools in its pool branch (a bug of the
        TF graph that FID keeps), the one before it average-pools without the padding."""

        def __init__(self, in_channels, pool="avg"):
            super().__init__(in_channels)
            self.pool = pool

        def _forward(self, x):
            b1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            pooled = (F.max_pool2d(x, 3, 1, 1) if self.pool == "max"
                      else F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
            return [b1, b3, bd, self.branch_pool(pooled)]

    return FIDInceptionA, FIDInceptionC, FIDInceptionE


class FIDInceptionV3(nn.Module):
    """pytorch-fid's Inception-v3 returning the 2048-d pool3 features.

    Input: (B, 3, H, W) in [0, 1], any size; resized to 299² (bilinear, ``align_corners=False``)
    and mapped to [-1, 1], as ``pytorch_fid.inception.InceptionV3(resize_input=True,
    normalize_input=True)``.
    """

    num_features = 2048

    def __init__(self):
        super().__init__()
        from torchvision.models.inception import Inception3  # heavy, as in _fid_blocks
        A, C, E = _fid_blocks()
        net = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
        net.Mixed_5b = A(192, pool_features=32)
        net.Mixed_5c = A(256, pool_features=64)
        net.Mixed_5d = A(288, pool_features=64)
        net.Mixed_6b = C(768, channels_7x7=128)
        net.Mixed_6c = C(768, channels_7x7=160)
        net.Mixed_6d = C(768, channels_7x7=160)
        net.Mixed_6e = C(768, channels_7x7=192)
        net.Mixed_7b = E(1280, pool="avg")
        net.Mixed_7c = E(2048, pool="max")
        self.net = net

    def forward(self, x):
        n = self.net
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                     "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c",
                     "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(n, name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    @classmethod
    def from_file(cls, path) -> "FIDInceptionV3":
        p = require_file(path, "inception", "pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
        state = torch.load(p, map_location="cpu", weights_only=True)
        model = cls()
        _load_strict(model.net, state, p, "pytorch-fid Inception-v3")
        return model.eval()


# ------------------------------------------------------------------ VGGFace2 ResNet-50 (FVA)
class _CaffeBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class VGGFace2ResNet50(nn.Module):
    """The VGGFace2 ResNet-50 of ``compute_FVA.py`` without its classifier (``include_top=False``):
    (B, 3, 224, 224) BGR minus the VGGFace2 channel means, 0–255 scale → 2048-d embedding."""

    MEAN_BGR = (91.4953, 103.8827, 131.0912)
    num_features = 2048

    def __init__(self, num_classes: int = 8631):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
        inplanes = 64
        for i, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2),
                                                      (512, 3, 2)), start=1):
            down = None
            if stride != 1 or inplanes != planes * 4:
                down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                     nn.BatchNorm2d(planes * 4))
            layers = [_CaffeBottleneck(inplanes, planes, stride, down)]
            inplanes = planes * 4
            layers += [_CaffeBottleneck(inplanes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.avgpool = nn.AvgPool2d(7, stride=1)
        self.fc = nn.Linear(2048, num_classes)  # in the weight file; unused for embeddings

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    @staticmethod
    def preprocess(images: list[np.ndarray]) -> torch.Tensor:
        """uint8 RGB (H, W, 3) images → the network's input (``compute_FVA.CFDataset``):
        shorter side resized to 224 (PIL bilinear), RGB → BGR, minus the BGR means."""
        out = []
        for im in images:
            pil = Image.fromarray(im)
            w, h = pil.size
            s = 224 / min(w, h)
            pil = pil.resize((round(w * s), round(h * s)), Image.BILINEAR)
            a = np.asarray(pil, dtype=np.float32)[:, :, ::-1] - np.array(VGGFace2ResNet50.MEAN_BGR,
                                                                         dtype=np.float32)
            out.append(torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))))
        return torch.stack(out)

    @classmethod
    def from_file(cls, path) -> "VGGFace2ResNet50":
        p = require_file(path, "vggface2", "the VGGFace2 authors' resnet50_ft_weight.pkl")
        if p.suffix in (".pth", ".pt"):
            state = torch.load(p, map_location="cpu", weights_only=True)
        else:
            with open(p, "rb") as fh:
                state = pickle.load(fh, encoding="latin1")
        state = {k: torch.from_numpy(np.asarray(v)) if not torch.is_tensor(v) else v
                 for k, v in state.items()}
        model = cls(num_classes=int(state["fc.weight"].shape[0]) if "fc.weight" in state else 8631)
        _load_strict(model, state, p, "VGGFace2 ResNet-50")
        return model.eval()


# -------------------------------------------------------------------------- STEEX oracle
_STEEX_STAGES = ((2, 3, 64, 1), (3, 4, 128, 2), (4, 6, 256, 2), (5, 3, 512, 2))


class _Resnet50FtDag(nn.Module):
    """The MatConvNet-converted VGGFace2 ResNet-50 (``Resnet50_ft_dag``) with its key names;
    built by loops instead of the original's unrolled code, same modules and order."""

    def __init__(self):
        super().__init__()
        self.conv1_7x7_s2 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.conv1_7x7_s2_bn = nn.BatchNorm2d(64)
        self.pool1_3x3_s2 = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
        cin = 64
        for s, blocks, width, stride in _STEEX_STAGES:
            for b in range(1, blocks + 1):
                st = stride if b == 1 else 1
                p = f"conv{s}_{b}"
                self._conv(f"{p}_1x1_reduce", cin, width, 1, st)
                self._conv(f"{p}_3x3", width, width, 3, 1)
                self._conv(f"{p}_1x1_increase", width, width * 4, 1, 1)
                if b == 1:
                    self._conv(f"{p}_1x1_proj", cin, width * 4, 1, st)
                cin = width * 4
        self.pool5_7x7_s1 = nn.AvgPool2d(7, stride=1)

    def _conv(self, name, cin, cout, k, stride):
        setattr(self, name, nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False))
        setattr(self, f"{name}_bn", nn.BatchNorm2d(cout))

    def _cbn(self, name, x):
        return getattr(self, f"{name}_bn")(getattr(self, name)(x))

    def forward(self, x):
        x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)
        x = self.pool1_3x3_s2(F.relu(self._cbn("conv1_7x7_s2", x)))
        for s, blocks, _, _ in _STEEX_STAGES:
            for b in range(1, blocks + 1):
                p = f"conv{s}_{b}"
                out = F.relu(self._cbn(f"{p}_1x1_reduce", x))
                out = F.relu(self._cbn(f"{p}_3x3", out))
                out = self._cbn(f"{p}_1x1_increase", out)
                x = F.relu(out + (self._cbn(f"{p}_1x1_proj", x) if b == 1 else x))
        return self.pool5_7x7_s1(x).flatten(1)


class SteexOracle(nn.Module):
    """The CelebA-HQ 40-attribute oracle of STEEX/ACE (``OracleResnet``): sigmoid probabilities.

    Input: images in [-1, 1] (the ``Normalize(0.5, 0.5)`` of the scripts' datasets), as
    ``compute_CD.py`` feeds it. ``compute_MNAC.py`` wraps the same oracle in a second
    ``Normalizer(0.5, 0.5)``, so there it sees (x − 0.5)/0.5 of the [-1, 1] image, i.e. [-3, 1];
    ``mnac_script_input=True`` reproduces that.
    """

    num_classes = 40

    def __init__(self, mnac_script_input: bool = False):
        super().__init__()
        self.feat_extract = _Resnet50FtDag()
        self.classifier = nn.Linear(2048, 40)
        self.mnac_script_input = mnac_script_input

    def features(self, x):
        if self.mnac_script_input:
            x = (x - 0.5) / 0.5
        return self.feat_extract(x)

    def forward(self, x):
        return torch.sigmoid(self.classifier(self.features(x)))

    @classmethod
    def from_file(cls, path, mnac_script_input: bool = False) -> "SteexOracle":
        p = require_file(path, "steex oracle", "the STEEX/ACE CelebA-HQ oracle checkpoint "
                         "(oracle.pth or checkpoint.tar with 'model_state_dict')")
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
        state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise WeightsError(f"{p}: expected a dict with 'model_state_dict'")
        model = cls(mnac_script_input)
        _load_strict(model, state, p, "STEEX OracleResnet")
        return model.eval()
