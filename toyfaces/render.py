"""Procedural toy faces with ground truth: the offline stand-in for CelebA-HQ.

Every face is drawn from continuous *factors* (smile curvature, mouth opening, hair colour, hat,
glasses, beard, pose, lighting, ...). Binary CelebA labels are thresholds of those factors and
every modelled attribute has a *region mask*: the pixels a perfect annotator would mark. Geometry is
defined on a 64-unit canvas and rasterised at any size with soft (anti-aliased) edges, because
smooth, flat-coloured shapes are what a small VQ autoencoder can learn in minutes on a CPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from classifier.attributes import ATTRIBUTES, attribute_index

CANVAS = 64.0  # geometry units; rendering scales them to the requested size
HAIR_COLOURS = {
    "Black_Hair": (0.10, 0.08, 0.07),
    "Blond_Hair": (0.93, 0.80, 0.42),
    "Brown_Hair": (0.45, 0.27, 0.12),
    "Gray_Hair": (0.70, 0.70, 0.72),
}
SKIN_LIGHT = np.array([0.98, 0.84, 0.72])
SKIN_DARK = np.array([0.45, 0.30, 0.20])
LIP = np.array([0.62, 0.12, 0.14])
MOUTH_INSIDE = np.array([0.22, 0.04, 0.05])
SMILE_AMPLITUDE = 5.0  # how far (canvas units) mouth corners move between smile = 0 and |smile| = 1

# Attributes this world models; everything else is written as -1 like an absent attribute.
MODELLED = ("Smiling", "Mouth_Slightly_Open", "Eyeglasses", "Male", "Mustache", "No_Beard",
            "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Wearing_Hat")


@dataclass
class Spurious:
    """Plant a correlation: with probability ``strength`` the ``cue`` copies the ``target`` label.

    Only binary drawn cues are supported (``Wearing_Hat``, ``Eyeglasses``); the classic example is
    ``Spurious("Smiling", "Wearing_Hat", 0.9)``: nearly every smiling face wears a hat, so a
    classifier may learn the hat instead of the mouth, which counterfactuals then expose.
    """
    target: str = "Smiling"
    cue: str = "Wearing_Hat"
    strength: float = 0.9

    def __post_init__(self):
        attribute_index(self.target)
        if self.cue not in ("Wearing_Hat", "Eyeglasses"):
            raise ValueError(f"spurious cue must be Wearing_Hat or Eyeglasses, got {self.cue!r}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"spurious strength must be in [0, 1], got {self.strength}")


@dataclass
class Factors:
    """Continuous factors of a batch of faces (one array entry per face)."""
    smile: np.ndarray          # [-1, 1]; > 0 is Smiling
    mouth_open: np.ndarray     # [0, 1]; > 0.5 is Mouth_Slightly_Open
    glasses: np.ndarray        # bool
    male: np.ndarray           # bool
    mustache: np.ndarray       # bool (male only)
    beard: np.ndarray          # bool (male only)
    hair: np.ndarray           # int index into HAIR_COLOURS
    hat: np.ndarray            # bool
    hat_colour: np.ndarray     # (B, 3)
    skin: np.ndarray           # [0, 1] light..dark
    background: np.ndarray     # (B, 3)
    dx: np.ndarray
    dy: np.ndarray
    scale: np.ndarray
    light: np.ndarray          # brightness multiplier
    light_dir: np.ndarray      # horizontal lighting gradient
    noise_seed: np.ndarray     # per-image seed of the pixel noise

    def __len__(self) -> int:
        return len(self.smile)

    def take(self, idx) -> "Factors":
        return Factors(**{k: np.asarray(v)[idx] for k, v in asdict(self).items()})

    def records(self) -> list[dict]:
        """JSON-friendly per-face dicts (used for ``meta.json``)."""
        d = asdict(self)
        out = []
        for i in range(len(self)):
            rec = {}
            for k, v in d.items():
                x = np.asarray(v)[i]
                rec[k] = x.tolist() if x.ndim else (bool(x) if x.dtype == bool else
                                                    int(x) if np.issubdtype(x.dtype, np.integer)
                                                    else float(x))
            out.append(rec)
        return out

    @staticmethod
    def from_records(recs: list[dict]) -> "Factors":
        keys = Factors.__dataclass_fields__.keys()
        return Factors(**{k: np.array([r[k] for r in recs]) for k in keys})


def sample_factors(n: int, seed: int, spurious: Spurious | None = None) -> Factors:
    """Draw ``n`` faces' factors deterministically from ``seed``."""
    rng = np.random.default_rng(seed)
    # Smile: mostly clear cases, plus 10 % drawn near the boundary (the ambiguous faces).
    sign = rng.choice([-1.0, 1.0], size=n)
    smile = sign * (0.15 + 0.85 * rng.random(n))
    near = rng.random(n) < 0.10
    smile[near] = rng.uniform(-0.3, 0.3, size=near.sum())
    opened = rng.random(n) < 0.3
    mouth_open = np.where(opened, rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.3, n))
    male = rng.random(n) < 0.5
    f = Factors(
        smile=smile,
        mouth_open=mouth_open,
        glasses=rng.random(n) < 0.25,
        male=male,
        mustache=male & (rng.random(n) < 0.4),
        beard=male & (rng.random(n) < 0.4),
        hair=rng.integers(0, len(HAIR_COLOURS), n),
        hat=rng.random(n) < 0.2,
        hat_colour=rng.choice(np.array([[0.15, 0.25, 0.70], [0.75, 0.15, 0.15], [0.15, 0.55, 0.25],
                                        [0.85, 0.85, 0.85]]), size=n),
        skin=rng.random(n),
        background=rng.uniform(0.25, 0.85, (n, 3)),
        dx=rng.uniform(-3, 3, n),
        dy=rng.uniform(-2, 2, n),
        scale=rng.uniform(0.92, 1.08, n),
        light=rng.uniform(0.88, 1.1, n),
        light_dir=rng.uniform(-0.08, 0.08, n),
        noise_seed=rng.integers(0, 2**31 - 1, n),
    )
    if spurious is not None:
        target = labels_of(f)[:, attribute_index(spurious.target)] > 0
        copy = rng.random(n) < spurious.strength
        cue = "hat" if spurious.cue == "Wearing_Hat" else "glasses"
        setattr(f, cue, np.where(copy, target, getattr(f, cue)))
    return f


def labels_of(f: Factors) -> np.ndarray:
    """CelebA labels (N, 40) in {-1, +1}; unmodelled attributes are -1."""
    lab = -np.ones((len(f), len(ATTRIBUTES)), dtype=np.int8)

    def put(name, cond):
        lab[:, attribute_index(name)] = np.where(cond, 1, -1)

    put("Smiling", f.smile > 0)
    put("Mouth_Slightly_Open", f.mouth_open > 0.5)
    put("Eyeglasses", f.glasses)
    put("Male", f.male)
    put("Mustache", f.mustache)
    put("No_Beard", ~f.beard)
    for k, name in enumerate(HAIR_COLOURS):
        put(name, f.hair == k)
    put("Wearing_Hat", f.hat)
    return lab


# ----------------------------------------------------------------------------------------------
# Geometry: signed-distance-like fields on the canvas, per face (broadcast over (B, H, W)).
# ----------------------------------------------------------------------------------------------
@dataclass
class _Geom:
    cx: np.ndarray
    cy: np.ndarray
    s: np.ndarray
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    px: float = 1.0  # canvas units per pixel (edge softness)

    def ellipse(self, ox, oy, rx, ry):
        """Approximate signed distance (canvas units) to an ellipse centred at (cx+ox, cy+oy)."""
        ex = (self.x - (self.cx + ox * self.s)) / (rx * self.s)
        ey = (self.y - (self.cy + oy * self.s)) / (ry * self.s)
        return (np.sqrt(ex ** 2 + ey ** 2) - 1.0) * np.minimum(rx, ry) * self.s

    def box(self, x0, x1, y0, y1):
        """Signed distance to an axis-aligned box given in face-relative units."""
        cx0, cx1 = self.cx + x0 * self.s, self.cx + x1 * self.s
        cy0, cy1 = self.cy + y0 * self.s, self.cy + y1 * self.s
        dx = np.maximum(cx0 - self.x, self.x - cx1)
        dy = np.maximum(cy0 - self.y, self.y - cy1)
        return np.maximum(dx, dy)

    def alpha(self, sd):
        """Coverage from a signed distance: a one-pixel soft edge."""
        return np.clip(0.5 - sd / self.px, 0.0, 1.0)


def _mouth_curve(g: _Geom, smile, half_width=6.0, oy=9.0):
    """Vertical position of the mouth line and the horizontal distance beyond its ends."""
    mx, my = g.cx, g.cy + oy * g.s
    w = half_width * g.s
    u = np.clip((g.x - mx) / w, -1.0, 1.0)
    # Corners rise by SMILE_AMPLITUDE * smile relative to the centre (image y points down).
    ycurve = my - smile * SMILE_AMPLITUDE * g.s * (u ** 2 - 0.5)
    beyond = np.maximum(np.abs(g.x - mx) - w, 0.0)
    return ycurve, beyond


def _regions(g: _Geom, f: Factors):
    """Signed distances of every drawn part (used for drawing and for masks)."""
    col = lambda a: a[:, None, None]  # noqa: E731  (per-face scalars over the grid)
    r = {}
    r["face"] = g.ellipse(0, 0, 14, 18)
    r["hair_cap"] = g.ellipse(0, -3, 16.5, 19)
    r["hair_long"] = np.maximum(g.box(-17.5, 17.5, -6, 16), -g.ellipse(0, 2, 13, 20))
    r["fringe"] = np.maximum(g.ellipse(0, -17, 13, 6), g.box(-14, 14, -30, -12))
    r["hat"] = np.minimum(g.box(-13, 13, -31, -17), g.box(-19, 19, -19.5, -16))
    r["eye_l"] = g.ellipse(-6, -3, 1.8, 1.8)
    r["eye_r"] = g.ellipse(6, -3, 1.8, 1.8)
    ring = lambda ox: np.abs(g.ellipse(ox, -3, 4.2, 3.6)) - 0.7 * g.s  # noqa: E731
    r["glasses"] = np.minimum(np.minimum(ring(-6), ring(6)), g.box(-2, 2, -3.6, -2.6))
    ycurve, beyond = _mouth_curve(g, col(f.smile))
    dist = np.sqrt(beyond ** 2 + (g.y - ycurve) ** 2)
    r["lips"] = dist - 1.3 * g.s
    open_h = col(f.mouth_open) * 3.2 * g.s
    inside = np.maximum(np.maximum(ycurve - g.y, g.y - (ycurve + open_h)), beyond - 0.0)
    r["mouth_inside"] = np.where(col(f.mouth_open) > 0.05, inside, 1e3)
    r["mustache"] = g.ellipse(0, 5.2, 6.5, 1.6)
    r["beard"] = np.maximum(np.maximum(g.ellipse(0, 0, 14, 18), -g.ellipse(0, 9, 8, 4.5)),
                            g.box(-15, 15, 4, 20))
    # Mask-only regions: where the attribute lives whatever its value.
    r["mouth_region"] = g.box(-8.5, 8.5, 4.0, 17.0)  # every smile / opening state fits
    r["eye_region"] = g.box(-11.5, 11.5, -7.5, 1.5)
    r["hat_region"] = g.box(-19.5, 19.5, -32, -15.5)
    r["mustache_region"] = g.ellipse(0, 5.2, 8, 2.8)
    r["beard_region"] = np.maximum(g.ellipse(0, 0, 15, 19), g.box(-16, 16, 3, 21))
    return r


def render(f: Factors, size: int = 64, with_masks: bool = False, chunk: int = 256):
    """Rasterise faces.

    Returns
    -------
    images : uint8 array (N, size, size, 3)
    masks : dict name -> bool array (N, size, size), only if ``with_masks``
    """
    n = len(f)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = {a: np.zeros((n, size, size), dtype=bool) for a in MODELLED} if with_masks else None
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        img, m = _render_chunk(f.take(sl), size, with_masks)
        images[sl] = img
        if with_masks:
            for k in masks:
                masks[k][sl] = m[k]
    return (images, masks) if with_masks else images


def render_tensor(f: Factors, size: int = 64):
    """Rasterised faces as the classifiers take them: float tensor (N, 3, size, size) in [-1, 1]."""
    import torch  # here, so that rendering datasets needs no torch import
    return torch.from_numpy(render(f, size)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _render_chunk(f: Factors, size: int, with_masks: bool):
    b = len(f)
    px = CANVAS / size
    coords = (np.arange(size) + 0.5) * px
    y, x = np.meshgrid(coords, coords, indexing="ij")
    col = lambda a: np.asarray(a, dtype=np.float64)[:, None, None]  # noqa: E731
    g = _Geom(cx=col(32 + f.dx), cy=col(33 + f.dy), s=col(f.scale), x=x[None], y=y[None], px=px)
    r = _regions(g, f)

    canvas = np.empty((b, size, size, 3))
    # Background: a flat colour with a gentle vertical gradient.
    canvas[:] = f.background[:, None, None, :] * (1.05 - 0.1 * (y / CANVAS))[None, :, :, None]

    def paint(sd, colour, where=None):
        a = g.alpha(sd)
        if where is not None:
            a = a * col(where)
        colour = np.asarray(colour, dtype=np.float64)
        colour = colour[:, None, None, :] if colour.ndim == 2 else colour[None, None, None, :]
        canvas[:] = canvas * (1 - a[..., None]) + colour * a[..., None]

    hair_rgb = np.array(list(HAIR_COLOURS.values()))[f.hair]
    skin_rgb = SKIN_LIGHT[None] * (1 - f.skin[:, None]) + SKIN_DARK[None] * f.skin[:, None]
    paint(r["hair_long"], hair_rgb, where=~f.male)          # long hair behind the face
    paint(r["hair_cap"], hair_rgb)
    paint(r["face"], skin_rgb)
    paint(r["beard"], hair_rgb * 0.8, where=f.beard)
    paint(r["eye_l"], [0.05, 0.05, 0.08])
    paint(r["eye_r"], [0.05, 0.05, 0.08])
    paint(r["mouth_inside"], MOUTH_INSIDE)
    paint(r["lips"], LIP)
    paint(r["mustache"], hair_rgb * 0.7, where=f.mustache)
    paint(r["glasses"], [0.08, 0.08, 0.10], where=f.glasses)
    paint(r["fringe"], hair_rgb, where=~f.hat)
    paint(r["hat"], f.hat_colour, where=f.hat)

    # Lighting (global brightness and a horizontal gradient) and mild sensor noise.
    shade = col(f.light) * (1 + col(f.light_dir) * (x[None] - 32) / 32)
    canvas *= shade[..., None]
    noise = np.stack([np.random.default_rng(int(s)).normal(0, 0.006, (size, size, 3))
                      for s in f.noise_seed])
    canvas += noise
    img = np.clip(np.round(canvas * 255), 0, 255).astype(np.uint8)
    if not with_masks:
        return img, None

    inside = lambda sd: sd <= 0  # noqa: E731
    hair_drawn = (inside(r["hair_cap"]) | (inside(r["hair_long"]) & col(~f.male).astype(bool))) \
        & ~inside(r["face"])
    hair_drawn |= inside(r["fringe"]) & col(~f.hat).astype(bool)
    hair_drawn &= ~(inside(r["hat"]) & col(f.hat).astype(bool))
    m = {
        "Smiling": inside(r["mouth_region"]),
        "Mouth_Slightly_Open": inside(r["mouth_region"]),
        "Eyeglasses": inside(r["eye_region"]),
        "Male": inside(r["beard_region"]) | inside(r["hair_long"]),
        "Mustache": inside(r["mustache_region"]),
        "No_Beard": inside(r["beard_region"]),
        "Wearing_Hat": inside(r["hat_region"]),
    }
    for name in HAIR_COLOURS:
        m[name] = hair_drawn
    return img, {k: np.broadcast_to(v, (b, size, size)).copy() for k, v in m.items()}


def mouth_geometry(f: Factors, size: int = 64):
    """Mouth centre (x, y) and half width in pixels, for tests that check masks against geometry."""
    k = size / CANVAS
    return np.stack([(32 + f.dx) * k, (33 + f.dy + 9 * f.scale) * k, 6 * f.scale * k], axis=1)
