"""The protocol's networks by name, and a cache of what they computed per image file.

Three registries, one spec string each (``NAME`` or ``NAME:ARG[:ARG]``):

- :data:`FID_FEATURES` — ``inception:PATH`` (pytorch-fid's Inception-v3 weights, the published
  choice), ``oracle[:CKPT]`` (penultimate features of a project classifier; the offline default
  on the toy world), ``torchvision:ARCH:PATH`` (any torchvision classifier with local weights;
  features = the input of its last linear layer).
- :data:`FACE_MODELS` — ``vggface2:PATH`` (the protocol's VGGFace2 ResNet-50, cosine > 0.5),
  ``dlib[:DIR]`` (dlib's face ResNet shipped by the ``face-recognition-models`` package,
  Euclidean distance < 0.6), ``oracle[:CKPT]`` (a project classifier's penultimate features,
  cosine > :data:`ORACLE_SAME_FACE_COSINE`; the toy world's stand-in).
- :data:`ORACLES` — ``steex:PATH`` (the STEEX/ACE CelebA-HQ 40-attribute oracle, as
  ``compute_CD.py`` feeds it), ``steex-mnac:PATH`` (the same, fed as ``compute_MNAC.py`` does),
  ``CKPT`` or a name the caller's ``resolve`` knows (a project classifier checkpoint).

Every network takes uint8 RGB images (H, W, 3) and returns float32 rows. A missing weight file
raises :class:`~dvce.protocol.nets.WeightsError` naming the file. :class:`FeatureStore` keeps the
rows per image-file content hash (per pair for pair-dependent values) in ``RUN/.features/``, so
re-evaluating a run recomputes nothing.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from classifier.images import load_pil
from dvce.protocol.nets import (FIDInceptionV3, SteexOracle, VGGFace2ResNet50, WeightsError,
                                require_file)
from fileio import atomic_write_bytes

# The oracle embedding's same-face rule on the toy world: cosine > 0.8 of the penultimate features
# with the explained attribute's read-out direction projected out (an attribute classifier's
# features move along it by design when the attribute changes). Measured on 200 rendered toy faces
# (seed 123) against the same faces with the smile negated: same face 100 % above 0.8 (raw
# features: 57 %), different faces 4.4 % above it; tests/test_protocol.py checks it.
ORACLE_SAME_FACE_COSINE = 0.8


def file_identity(path) -> str:
    """Cheap identity of a weight file for cache keys: resolved path, size, modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


def read_rgb(path) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3)."""
    return np.asarray(load_pil(path))


def read_rgb_files(paths) -> list[np.ndarray]:
    return [read_rgb(p) for p in paths]


def to_unit(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images of one size → (B, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


@dataclass
class Network:
    """A protocol network: ``spec`` as given, ``kind`` (registry name), ``key`` (cache identity),
    ``describe`` (one line for metrics.json) and ``fn`` mapping uint8 images to rows."""
    spec: str
    kind: str
    key: str
    describe: str
    fn: Callable[[list[np.ndarray]], np.ndarray]
    rule: tuple[str, float] | None = None      # face models: (metric, threshold)
    pairwise: bool = False                      # face models whose embedding depends on the pair
    extra: dict = field(default_factory=dict)

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        return self.fn(images)


def _batched(module_fn, batch_size: int):
    def run(images):
        out = [module_fn(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    return run


# ----------------------------------------------------------------------- project classifiers
_LOADED: dict = {}  # (identity, device) -> model: the oracle serves FID, face and MNAC at once


def _load_project(ckpt, resolve, device):
    from classifier.models import load_classifier  # heavy: Lightning (~3 s), only for checkpoints
    path = Path(resolve(ckpt) if resolve else ckpt)
    if not path.is_file():
        raise WeightsError(f"classifier checkpoint not found: {path}")
    key = (file_identity(path), str(device))
    if key not in _LOADED:
        _LOADED.clear()  # keep at most one checkpoint's modules alive between runs
        _LOADED[key] = load_classifier(path, map_location=device).requires_grad_(False)
    return _LOADED[key], path


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of ``model``'s last ``nn.Linear`` (its penultimate features) for ``x``."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError(f"{type(model).__name__} has no linear layer to take features before")
    got = {}
    h = last[-1].register_forward_pre_hook(lambda m, inp: got.__setitem__("x", inp[0]))
    try:
        model(x)
    finally:
        h.remove()
    return got["x"].flatten(1)


def _project_features(model, device):
    @torch.no_grad()
    def fn(images):
        return penultimate(model, (to_unit(images) * 2 - 1).to(device)).float().cpu().numpy()
    return fn


def _project_probs(model, device):
    @torch.no_grad()
    def fn(images):
        return torch.sigmoid(model((to_unit(images) * 2 - 1).to(device))).float().cpu().numpy()
    return fn


def _need_ckpt(arg, default, what):
    ckpt = arg or default
    if not ckpt:
        raise WeightsError(f"{what} 'oracle' needs an oracle checkpoint: pass --oracle CKPT "
                           f"(or write oracle:CKPT)")
    return ckpt


# ------------------------------------------------------------------------- FID features
def fid_inception(arg, *, batch_size=32, device="cpu", **_):
    model = FIDInceptionV3.from_file(arg).to(device)
    fn = torch.no_grad()(lambda ims: model(to_unit(ims).to(device)).cpu().numpy())
    return Network(f"inception:{arg}", "inception", f"inception|{file_identity(arg)}",
                   f"pytorch-fid Inception-v3 pool3 (2048-d), {arg}", _batched(fn, batch_size))


def fid_oracle(arg, *, oracle=None, resolve=None, batch_size=32, device="cpu", **_):
    ckpt = _need_ckpt(arg, oracle, "--fid-features")
    model, path = _load_project(ckpt, resolve, device)
    return Network(f"oracle:{ckpt}", "oracle", f"oracle-features|{file_identity(path)}",
                   f"penultimate features of {model.architecture} ({ckpt})",
                   _batched(_project_features(model, device), batch_size))


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fid_torchvision(arg, *, batch_size=32, device="cpu", **_):
    import torchvision  # heavy (~2 s): only this feature network needs it
    arch, _, path = (arg or "").partition(":")
    if not arch or not path:
        raise WeightsError("torchvision features need ARCH:PATH, e.g. torchvision:resnet50:"
                           "resnet50-0676ba61.pth (a local torchvision state dict)")
    p = require_file(path, f"torchvision:{arch}", "a torchvision state dict saved locally")
    try:
        model = torchvision.models.get_model(arch, weights=None)
    except ValueError as e:
        raise WeightsError(f"unknown torchvision model {arch!r}: {e}") from e
    state = torch.load(p, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(f"{p} does not fit torchvision {arch}: {str(e)[:300]}") from e
    model = model.eval().requires_grad_(False).to(device)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def fn(images):
        x = F.interpolate(to_unit(images), size=(224, 224), mode="bilinear", align_corners=False)
        return penultimate(model, ((x - mean) / std).to(device)).cpu().numpy()
    return Network(f"torchvision:{arg}", "torchvision", f"torchvision|{arch}|{file_identity(p)}",
                   f"torchvision {arch} penultimate features, {p}", _batched(fn, batch_size))


FID_FEATURES = {"inception": fid_inception, "oracle": fid_oracle, "torchvision": fid_torchvision}


# ------------------------------------------------------------------------------ face models
def face_vggface2(arg, *, batch_size=32, device="cpu", **_):
    model = VGGFace2ResNet50.from_file(arg).to(device)
    fn = torch.no_grad()(lambda ims: model(VGGFace2ResNet50.preprocess(ims).to(device)).cpu().numpy())
    return Network(f"vggface2:{arg}", "vggface2", f"vggface2|{file_identity(arg)}",
                   f"VGGFace2 ResNet-50 ({arg}), same person: cosine > 0.5",
                   _batched(fn, batch_size), rule=("cosine", 0.5))


def dlib_models_dir(arg=None) -> Path:
    """Folder of dlib's ``.dat`` files: ``arg``, else the installed face-recognition-models
    package's ``models/`` (found without importing it: its ``__init__`` needs pkg_resources)."""
    if arg:
        return Path(arg)
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("dlib face model: the face-recognition-models package is not installed "
                           "(pip install face-recognition-models==0.3.0), or pass dlib:DIR with "
                           "shape_predictor_5_face_landmarks.dat and "
                           "dlib_face_recognition_resnet_model_v1.dat")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibFaces:
    """dlib's face pipeline: HOG detector, 5-point landmarks, 128-d ResNet descriptor.

    Same person: Euclidean distance < 0.6 (dlib's rule; its descriptors of different people
    still have cosine ≈ 0.8, so the protocol's cosine > 0.5 would call everyone the same).
    A pair is embedded with the face box found on the original (the counterfactual shows the
    same face in the same place); with no face found the whole image is the box.
    """

    SHAPE = "shape_predictor_5_face_landmarks.dat"
    RESNET = "dlib_face_recognition_resnet_model_v1.dat"

    def __init__(self, models_dir=None):
        d = dlib_models_dir(models_dir)
        shape = require_file(d / self.SHAPE, "dlib", "from the face-recognition-models package")
        resnet = require_file(d / self.RESNET, "dlib", "from the face-recognition-models package")
        try:
            import dlib  # optional: only this backend needs it
        except ImportError as e:
            raise WeightsError("dlib face model: dlib is not installed (pip install "
                               "dlib-bin==20.0.1.post1)") from e
        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(str(shape))
        self.resnet = dlib.face_recognition_model_v1(str(resnet))
        self.identity = f"{file_identity(shape)}|{file_identity(resnet)}"
        self.not_found = 0

    def box(self, image: np.ndarray):
        """The largest detected face (upsampling once if none is found at full size)."""
        for upsample in (0, 1):
            dets = list(self.detector(image, upsample))
            if dets:
                return max(dets, key=lambda r: r.width() * r.height())
        self.not_found += 1
        h, w = image.shape[:2]
        return self.dlib.rectangle(0, 0, w - 1, h - 1)

    def embed(self, image: np.ndarray, box) -> np.ndarray:
        image = np.ascontiguousarray(image)
        return np.asarray(self.resnet.compute_face_descriptor(image, self.shape(image, box)),
                          dtype=np.float32)

    def pairs(self, originals, counterfactuals) -> np.ndarray:
        """(n, 256): each row the original's and the counterfactual's descriptors."""
        out = []
        for o, c in zip(originals, counterfactuals):
            b = self.box(o)
            out.append(np.concatenate([self.embed(o, b), self.embed(c, b)]))
        return np.stack(out) if out else np.zeros((0, 256), np.float32)


def face_dlib(arg, **_):
    faces = DlibFaces(arg)

    def fn(images):  # images: originals then counterfactuals, n each
        n = len(images) // 2
        return faces.pairs(images[:n], images[n:])
    return Network(f"dlib{':' + arg if arg else ''}", "dlib", f"dlib|{faces.identity}",
                   "dlib ResNet face descriptor (128-d, face-recognition-models 0.3.0), "
                   "same person: Euclidean distance < 0.6", fn, rule=("euclidean", 0.6),
                   pairwise=True, extra={"faces": faces})


def without_readout(features: np.ndarray, model: nn.Module, query: int) -> np.ndarray:
    """``features`` with the component along the last linear layer's row ``query`` removed."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    w = last.weight[query].detach().double().cpu().numpy()
    w = w / max(np.linalg.norm(w), 1e-12)
    return (features - np.outer(features @ w, w)).astype(np.float32)


def face_oracle(arg, *, oracle=None, resolve=None, batch_size=32, device="cpu", query: int = 31,
                **_):
    ckpt = _need_ckpt(arg, oracle, "--face-model")
    model, path = _load_project(ckpt, resolve, device)
    feats = _batched(_project_features(model, device), batch_size)
    return Network(f"oracle:{ckpt}", "oracle",
                   f"oracle-face|{query}|{file_identity(path)}",
                   f"penultimate features of {model.architecture} ({ckpt}) without attribute "
                   f"{query}'s read-out direction, same face: cosine > {ORACLE_SAME_FACE_COSINE}",
                   lambda ims: without_readout(feats(ims), model, query),
                   rule=("cosine", ORACLE_SAME_FACE_COSINE))


FACE_MODELS = {"vggface2": face_vggface2, "dlib": face_dlib, "oracle": face_oracle}


# ---------------------------------------------------------------------------------- oracles
def oracle_steex(arg, *, batch_size=32, device="cpu", mnac_script_input=False, **_):
    model = SteexOracle.from_file(arg, mnac_script_input=mnac_script_input).to(device)
    fn = torch.no_grad()(lambda ims: model((to_unit(ims) * 2 - 1).to(device)).cpu().numpy())
    tag = "steex-mnac" if mnac_script_input else "steex"
    return Network(f"{tag}:{arg}", tag, f"{tag}|{file_identity(arg)}",
                   f"STEEX/ACE CelebA-HQ oracle ({arg})"
                   + (", input as compute_MNAC.py ([-3, 1])" if mnac_script_input else ""),
                   _batched(fn, batch_size))


def oracle_project(ckpt, *, resolve=None, batch_size=32, device="cpu", **_):
    model, path = _load_project(ckpt, resolve, device)
    return Network(str(ckpt), "project", f"project-probs|{file_identity(path)}",
                   f"{model.architecture} ({ckpt})", _batched(_project_probs(model, device),
                                                             batch_size))


ORACLES = {"steex": oracle_steex,
           "steex-mnac": lambda arg, **kw: oracle_steex(arg, mnac_script_input=True, **kw)}


# --------------------------------------------------------------------------------- lookups
def _split(spec: str) -> tuple[str, str | None]:
    name, sep, arg = str(spec).partition(":")
    return name, (arg if sep else None)


USAGE = {"inception": "inception:PATH", "oracle": "oracle[:CKPT]",
         "torchvision": "torchvision:ARCH:PATH", "vggface2": "vggface2:PATH", "dlib": "dlib[:DIR]"}


def _lookup(registry: dict, spec: str, what: str):
    name, arg = _split(spec)
    if name not in registry:
        raise ValueError(f"unknown {what} {spec!r}; choose from "
                         f"{', '.join(USAGE.get(k, k) for k in registry)}")
    return registry[name], arg


def fid_network(spec: str, **kw) -> Network:
    """The FID feature network of ``spec`` (see :data:`FID_FEATURES`)."""
    fn, arg = _lookup(FID_FEATURES, spec, "FID feature network")
    return fn(arg, **kw)


def face_network(spec: str, **kw) -> Network:
    """The face-embedding network of ``spec`` (see :data:`FACE_MODELS`)."""
    fn, arg = _lookup(FACE_MODELS, spec, "face model")
    return fn(arg, **kw)


def oracle_network(spec: str, **kw) -> Network:
    """The attribute oracle of ``spec``: ``steex:PATH``, ``steex-mnac:PATH`` or a project
    classifier checkpoint (or a name ``resolve`` turns into one)."""
    name, arg = _split(spec)
    if name in ORACLES:
        return ORACLES[name](arg, **kw)
    return oracle_project(spec, **kw)


# ----------------------------------------------------------------------------------- cache
def content_hash(path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


class FeatureStore:
    """Rows a network computed, per content key, in ``folder/<network>.npz`` (written
    atomically); ``folder=None`` keeps nothing."""

    def __init__(self, folder=None):
        self.folder = Path(folder) if folder is not None else None

    def _file(self, network_key: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", network_key.split("|")[0])[:40]
        digest = hashlib.sha1(network_key.encode()).hexdigest()[:12]
        return self.folder / f"{slug}-{digest}.npz"

    def _read(self, network_key):
        if self.folder is None:
            return {}
        f = self._file(network_key)
        try:
            with np.load(f, allow_pickle=False) as z:
                return dict(zip(z["keys"].tolist(), z["values"]))
        except (OSError, KeyError, ValueError):
            return {}

    def _write(self, network_key, table: dict) -> None:
        if self.folder is None or not table:
            return
        buf = io.BytesIO()
        keys = list(table)
        np.savez(buf, keys=np.array(keys), values=np.stack([table[k] for k in keys]))
        atomic_write_bytes(self._file(network_key), buf.getvalue())

    def rows(self, network_key: str, keys: list[str], compute: Callable[[list[int]], np.ndarray]
             ) -> tuple[np.ndarray, int]:
        """Rows for ``keys`` (computing the missing ones with ``compute(indices)``); returns the
        rows and how many were computed."""
        table = self._read(network_key)
        todo_keys, seen = [], set()
        for i, k in enumerate(keys):  # one computation per distinct missing key
            if k not in table and k not in seen:
                seen.add(k)
                todo_keys.append(i)
        if todo_keys:
            new = np.asarray(compute(todo_keys), dtype=np.float32)
            for i, row in zip(todo_keys, new):
                table[keys[i]] = row
            self._write(network_key, table)
        if not keys:
            return np.zeros((0, 0), np.float32), 0
        return np.stack([table[k] for k in keys]).astype(np.float32), len(todo_keys)
