"""Procedural person re-ID domains: person-like images with real cross-domain structure.

The generator draws pedestrians from simple shaded shapes (head, hair, torso, arms, legs,
shoes, bags, hats) with vectorised numpy on small windows of the image, then writes them in the
Market-1501 folder layout so that the exact code path of a real dataset is exercised.

Three groups of factors decide what an image looks like:

**Identity** (fixed for a person across all images): body build, leg length and head size;
skin and hair colour, hair style; upper garment colours, sleeve length, jacket and pattern
(plain, horizontal or vertical stripes, checks, a chest logo, a two-tone yoke); lower garment
(trousers, shorts, skirt) and its colour; shoes; accessories (backpack, hand/shoulder bag and
its side, hat).

**Camera** (fixed per camera of a domain, jittered per image): a background panorama of its
own (the image shows a random window of it), the preferred viewpoint (front / back / side,
which changes what is visible: a logo only from the front, a backpack from the back and the
side, only its straps from the front, a bag only on its visible side), illumination gain and
direction, a colour cast, optical blur, the person's scale and position in the crop, the
vertical foreshortening of an elevated camera, and the rate of partial occlusions (a bench or
a car at the bottom, another passer-by at one side, a pole).

**Tracklet** (shared by ``tracklet_length`` consecutive images of one person in one camera,
as real datasets are cut from tracklets): viewpoint, facing, scale, position in the crop and
the background window; each frame then jitters them slightly and has its own walking
phase, light flicker and occlusions.

**Domain** (a named :class:`DomainStyle` preset): its own identity pool and person-id range,
number of cameras, scene type and a global style: clothing palette statistics, colour
temperature, contrast and haze, saturation, sensor noise, effective resolution, blur and JPEG
quality. The presets:

* ``mall``: indoor, 6 cameras, warm artificial light, crisp high-contrast images. Clothing
  hues are spread over the whole colour wheel with strong saturation, so identities differ
  mostly by *hue*; patterns and accessories are rare.
* ``street``: outdoor, 5 cameras, cool daylight, hazy lower-contrast, noisier and softer
  images (0.9x effective resolution, stronger JPEG), farther and more tilted cameras.
  Clothing comes from a few desaturated hue families (blue-grey, brown, olive, dusty red,
  teal), so identities differ by *shade*, *pattern* and *accessories* more than by hue.

A model that learnt to tell ``mall`` people apart by hue has little to go on in ``street``,
and a ``street`` model never needed to separate hues, so a supervised baseline loses much of
its accuracy across the two, while both domains stay learnable on their own.

Usage::

    from reidlab.datasets.synthetic import SyntheticReID, save_preview

    data = SyntheticReID("street", num_train_ids=100, num_test_ids=100)   # generated once
    data.train[0]   # Record(path=..., pid=0, camid=...)
    save_preview(["mall", "street"], "preview.png")

Datasets are cached in ``$REIDLAB_CACHE/synthetic`` (else ``~/.cache/reidlab/synthetic``),
one folder per domain and parameter hash. Generation writes into a temporary sibling folder,
writes a marker file last and renames the folder into place, so concurrent processes (DDP
ranks) never see a half-written dataset.
"""

from __future__ import annotations

import colorsys
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from reidlab.datasets.market import MarketLayoutDataset

__all__ = [
    "SYNTHETIC_DOMAINS",
    "DomainStyle",
    "Identity",
    "Camera",
    "SyntheticReID",
    "default_cache_dir",
    "generate_domain",
    "render_person",
    "sample_identity",
    "sample_camera",
    "save_preview",
]

GENERATOR_VERSION = 2
COMPLETE_MARKER = ".complete"
PID_CAPACITY = 9999  # ids available to one domain above its ``pid_base``

F32 = np.float32
Color = np.ndarray  # float32 RGB triple in [0, 1]


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainStyle:
    """A synthetic domain: cameras, scene, clothing palette and global image style.

    Colour parameters are fractions in [0, 1]; hues are on the colour wheel (0 red,
    0.33 green, 0.67 blue).
    """

    name: str
    description: str
    num_cameras: int
    pid_base: int  # person ids of the domain are pid_base + 1 ... pid_base + PID_CAPACITY
    scene: str  # "indoor" or "outdoor" background generator
    # clothing palette
    hue_centers: tuple[float, ...]  # centres of the clothing hue distribution
    hue_spread: float  # std of the hue around a centre (>= 0.5 means uniform)
    saturation: tuple[float, float]
    value: tuple[float, float]
    lower_dark_prob: float  # probability that trousers/skirt are near black/dark denim
    pattern_prob: float  # probability that the upper garment is not plain
    pattern_freq: tuple[float, float]  # stripes / checks per body height
    contrast_prob: float  # probability that the second garment colour is a light/dark contrast
    backpack_prob: float
    bag_prob: float
    hat_prob: float
    # camera geometry and capture
    person_scale: tuple[float, float]  # person height / image height
    tilt: tuple[float, float]  # vertical foreshortening exponent (1 = level camera)
    gain: tuple[float, float]  # per-camera illumination gain
    cast_strength: float  # per-camera colour cast amplitude
    occlusion_prob: tuple[float, float]  # per-camera range
    blur: tuple[float, float]  # per-camera Gaussian blur radius range at 128x64
    # global style
    temperature: tuple[float, float, float]  # RGB gains of the light's colour temperature
    contrast: float
    haze: float  # added grey (airlight)
    saturation_gain: float
    noise_std: float  # sensor noise, fraction of the 0..255 range
    resolution: float  # effective resolution relative to the output size
    jpeg_quality: int
    # consecutive frames of one person in one camera that share viewpoint, position and
    # background (real datasets are cut from tracklets); 1 = every image independent
    tracklet_length: int = 1
    extra: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


SYNTHETIC_DOMAINS: dict[str, DomainStyle] = {
    "mall": DomainStyle(
        name="mall",
        description="indoor shopping mall, 6 cameras, warm light, crisp and colourful",
        num_cameras=6,
        pid_base=10000,
        scene="indoor",
        hue_centers=(0.0,),
        hue_spread=1.0,
        saturation=(0.35, 0.9),
        value=(0.3, 0.95),
        lower_dark_prob=0.3,
        pattern_prob=0.45,
        pattern_freq=(9.0, 18.0),
        contrast_prob=0.5,
        backpack_prob=0.25,
        bag_prob=0.25,
        hat_prob=0.15,
        person_scale=(0.84, 0.95),
        tilt=(0.95, 1.08),
        gain=(0.95, 1.1),
        cast_strength=0.05,
        occlusion_prob=(0.03, 0.12),
        blur=(0.0, 0.4),
        temperature=(1.04, 1.0, 0.94),
        contrast=1.05,
        haze=0.0,
        saturation_gain=1.05,
        noise_std=0.008,
        resolution=1.0,
        jpeg_quality=92,
        tracklet_length=4,
    ),
    "street": DomainStyle(
        name="street",
        description="outdoor street, 5 cameras, cool hazy daylight, softer and noisier",
        num_cameras=5,
        pid_base=20000,
        scene="outdoor",
        hue_centers=(0.6, 0.09, 0.3, 0.95, 0.45, 0.75),
        hue_spread=0.12,
        saturation=(0.3, 0.8),
        value=(0.1, 0.9),
        lower_dark_prob=0.5,
        pattern_prob=0.6,
        pattern_freq=(5.0, 10.0),
        contrast_prob=0.7,
        backpack_prob=0.4,
        bag_prob=0.3,
        hat_prob=0.3,
        person_scale=(0.82, 0.94),
        tilt=(0.9, 1.12),
        gain=(0.9, 1.08),
        cast_strength=0.05,
        occlusion_prob=(0.05, 0.12),
        blur=(0.05, 0.35),
        temperature=(0.97, 0.99, 1.03),
        contrast=0.95,
        haze=0.02,
        saturation_gain=0.95,
        noise_std=0.006,
        resolution=1.0,
        jpeg_quality=88,
        tracklet_length=4,
    ),
}


def _get_style(domain: str | DomainStyle) -> DomainStyle:
    if isinstance(domain, DomainStyle):
        return domain
    try:
        return SYNTHETIC_DOMAINS[domain]
    except KeyError:
        known = ", ".join(sorted(SYNTHETIC_DOMAINS))
        raise ValueError(f"unknown synthetic domain {domain!r}; known domains: {known}") from None


def _domain_key(style: DomainStyle) -> int:
    return zlib.crc32(style.name.encode())


# --------------------------------------------------------------------------------------------
# Identities and cameras
# --------------------------------------------------------------------------------------------

PATTERNS = ("plain", "hstripes", "vstripes", "checks", "logo", "twotone")
LOWER_TYPES = ("trousers", "shorts", "skirt")
VIEWS = ("front", "back", "side")


def _hsv(h: float, s: float, v: float) -> Color:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0),
                                        min(max(v, 0.0), 1.0)), dtype=F32)


@dataclass
class Identity:
    """Appearance of one person (see the module docstring)."""

    build: float  # width multiplier
    hip: float  # hip height as a fraction of body height
    head: float  # head size multiplier
    skin: Color
    hair: Color
    hair_style: int  # 0 short, 1 long, 2 very short
    upper: Color
    upper2: Color  # pattern / logo / yoke / inner-shirt colour
    pattern: str
    pattern_freq: float
    long_sleeves: bool
    jacket: bool  # open jacket: inner colour visible as a front strip
    lower: Color
    lower_type: str
    shoes: Color
    backpack: Color | None
    bag: Color | None
    bag_side: int  # -1 left, +1 right (in the person's own frame)
    hat: Color | None
    stride: float

    def signature(self) -> tuple:
        """Hashable summary used to compare identity pools."""
        cols = (self.skin, self.hair, self.upper, self.upper2, self.lower, self.shoes)
        return (round(self.build, 4), round(self.hip, 4), self.pattern, self.lower_type,
                *(tuple(np.round(c, 4).tolist()) for c in cols))


def _clothing_color(style: DomainStyle, rng: np.random.Generator) -> Color:
    if style.hue_spread >= 0.5:
        hue = rng.random()
    else:
        hue = rng.choice(style.hue_centers) + rng.normal(0.0, style.hue_spread)
    return _hsv(hue, rng.uniform(*style.saturation), rng.uniform(*style.value))


_SKIN_LIGHT = np.array([0.96, 0.80, 0.69], F32)
_SKIN_DARK = np.array([0.33, 0.21, 0.14], F32)
_HAIR = np.array([[0.06, 0.05, 0.04], [0.20, 0.13, 0.08], [0.38, 0.25, 0.14],
                  [0.78, 0.64, 0.38], [0.62, 0.60, 0.58], [0.55, 0.22, 0.10]], F32)
_HAIR_P = np.array([0.38, 0.28, 0.16, 0.09, 0.06, 0.03])


def sample_identity(domain: str | DomainStyle, pid: int, seed: int = 0) -> Identity:
    """The identity ``pid`` of a domain (deterministic in ``domain``, ``pid``, ``seed``).

    Person ids of different domains live in disjoint ranges (``pid_base``) and every domain
    draws from its own palette statistics, so the identity pools are disjoint.
    """
    style = _get_style(domain)
    rng = np.random.default_rng([seed, _domain_key(style), 1, pid + 2])
    return _sample_identity(style, rng)


def _sample_identity(style: DomainStyle, rng: np.random.Generator) -> Identity:
    t = rng.beta(1.4, 1.4)
    skin = (1 - t) * _SKIN_LIGHT + t * _SKIN_DARK
    hair = _HAIR[rng.choice(len(_HAIR), p=_HAIR_P)] * F32(rng.uniform(0.85, 1.15))
    upper = _clothing_color(style, rng)
    upper2 = _clothing_color(style, rng)
    if rng.random() < style.contrast_prob:  # a contrasting second colour: light or dark
        hue, sat, val = colorsys.rgb_to_hsv(*upper.tolist())
        upper2 = _hsv(hue, sat * 0.6, rng.uniform(0.8, 0.95) if val < 0.5 else
                      rng.uniform(0.05, 0.25))
    pattern = "plain"
    if rng.random() < style.pattern_prob:
        pattern = str(rng.choice(PATTERNS[1:]))
    if rng.random() < style.lower_dark_prob:
        lower = _hsv(rng.choice([0.62, 0.08, 0.0]), rng.uniform(0.0, 0.5), rng.uniform(0.08, 0.4))
    else:
        lower = _clothing_color(style, rng)
    lower_type = str(rng.choice(LOWER_TYPES, p=[0.7, 0.12, 0.18]))
    shoes = _hsv(rng.random(), rng.uniform(0.0, 0.3), rng.choice([0.1, 0.3, 0.9]))

    def maybe(prob: float) -> Color | None:
        return _clothing_color(style, rng) if rng.random() < prob else None

    return Identity(
        build=float(rng.uniform(0.85, 1.2)),
        hip=float(rng.uniform(0.46, 0.53)),
        head=float(rng.uniform(0.9, 1.1)),
        skin=skin.astype(F32),
        hair=np.clip(hair, 0, 1).astype(F32),
        hair_style=int(rng.choice(3, p=[0.55, 0.3, 0.15])),
        upper=upper,
        upper2=upper2.astype(F32),
        pattern=pattern,
        pattern_freq=float(rng.uniform(*style.pattern_freq)),
        long_sleeves=bool(rng.random() < 0.6),
        jacket=bool(rng.random() < 0.25),
        lower=lower,
        lower_type=lower_type,
        shoes=shoes,
        backpack=maybe(style.backpack_prob),
        bag=maybe(style.bag_prob),
        bag_side=int(rng.choice([-1, 1])),
        hat=maybe(style.hat_prob),
        stride=float(rng.uniform(0.05, 0.16)),
    )


@dataclass
class Camera:
    """Capture conditions of one camera of a domain."""

    index: int
    view_probs: np.ndarray  # probabilities of front / back / side
    gain: float
    cast: Color  # RGB multiplier
    light_slope: float  # horizontal illumination gradient
    blur: float
    scale: float  # person height / image height
    tilt: float
    occlusion_prob: float
    scene_seed: int


def sample_camera(domain: str | DomainStyle, camid: int, seed: int = 0) -> Camera:
    """Camera ``camid`` (0-based) of a domain, deterministic in ``seed``."""
    style = _get_style(domain)
    if not 0 <= camid < style.num_cameras:
        raise ValueError(f"domain {style.name!r} has cameras 0..{style.num_cameras - 1}")
    rng = np.random.default_rng([seed, _domain_key(style), 2, camid])
    # each camera looks mostly along one walking direction
    main = camid % 3
    probs = rng.dirichlet([1.0, 1.0, 1.0]) * 0.5
    probs[main] += 0.5
    cast = 1.0 + rng.normal(0.0, style.cast_strength, 3)
    cast /= cast.mean()
    return Camera(
        index=camid,
        view_probs=probs,
        gain=float(rng.uniform(*style.gain)),
        cast=cast.astype(F32),
        light_slope=float(rng.uniform(-0.35, 0.35)),
        blur=float(rng.uniform(*style.blur)),
        scale=float(rng.uniform(*style.person_scale)),
        tilt=float(rng.uniform(*style.tilt)),
        occlusion_prob=float(rng.uniform(*style.occlusion_prob)),
        scene_seed=int(rng.integers(2**31)),
    )


# --------------------------------------------------------------------------------------------
# Drawing primitives
# --------------------------------------------------------------------------------------------

Fill = Color | Callable[[np.ndarray, np.ndarray], np.ndarray]


class _Canvas:
    """An RGB float image with body coordinates ``v`` (rows) and ``u`` (columns).

    ``v`` runs from 0 at the top of the head to 1 at the soles, ``u`` is horizontal in the
    same unit, 0 on the body axis. Both are 1-D, so every shape is evaluated only on the
    small window of rows and columns it covers, with a one-pixel anti-aliased edge.
    """

    def __init__(self, img: np.ndarray, top: float, height: float, cx: float, tilt: float):
        self.img = img
        self.h, self.w = img.shape[:2]
        self.top, self.height, self.cx, self.tilt = float(top), float(height), float(cx), tilt
        self.ph = F32(height)
        v = (np.arange(self.h, dtype=F32) + F32(0.5) - F32(top)) / self.ph
        if tilt != 1.0:  # elevated camera: the upper body is magnified
            pos = np.maximum(v, F32(0.0))
            v = np.where(v > 0, pos ** F32(tilt), v).astype(F32)
        self.v = v
        self.u = (np.arange(self.w, dtype=F32) + F32(0.5) - F32(cx)) / self.ph

    def _rows(self, v0: float, v1: float) -> tuple[int, int]:
        def y(v: float) -> float:
            if v > 0 and self.tilt != 1.0:
                v = v ** (1.0 / self.tilt)
            return self.top + self.height * v
        return max(int(y(v0)) - 1, 0), min(int(y(v1)) + 2, self.h)

    def _cols(self, u0: float, u1: float) -> tuple[int, int]:
        return (max(int(self.cx + self.height * u0) - 1, 0),
                min(int(self.cx + self.height * u1) + 2, self.w))

    def _blend(self, r0: int, c0: int, alpha: np.ndarray, col: np.ndarray) -> None:
        win = self.img[r0:r0 + alpha.shape[0], c0:c0 + alpha.shape[1]]
        if col.shape == win.shape:
            col -= win
        else:
            col = col - win
        col *= alpha[..., None]
        win += col

    def quad(self, v0: float, v1: float, uc: float, hw0: float, hw1: float | None = None,
             slope: float = 0.0, fill: Fill = None, shade: float = 0.35,
             opacity: float = 1.0) -> None:
        """A vertical band from ``v0`` to ``v1``: centre ``uc + slope * (v - v0)``, half width
        going linearly from ``hw0`` to ``hw1``; shaded like a cylinder."""
        hw1 = hw0 if hw1 is None else hw1
        r0, r1 = self._rows(v0, v1)
        ends = (uc, uc + slope * (v1 - v0))
        hw = max(hw0, hw1)
        c0, c1 = self._cols(min(ends) - hw, max(ends) + hw)
        if r1 <= r0 or c1 <= c0:
            return
        v, u = self.v[r0:r1], self.u[c0:c1]
        dv = v - F32(v0)
        if slope:
            du = u[None, :] - (F32(uc) + F32(slope) * dv)[:, None]
        else:
            du = (u - F32(uc))[None, :]
        if hw1 != hw0:
            half = (F32(hw0) + F32((hw1 - hw0) / max(v1 - v0, 1e-6)) * dv)[:, None]
        else:
            half = F32(hw0)
        # signed distance to the nearest edge, in pixels (positive inside)
        edge_v = np.minimum(dv, F32(v1) - v)[:, None]
        inside = np.minimum(half - np.abs(du), edge_v)
        alpha = inside * (self.ph * F32(opacity))
        alpha += F32(0.5 * opacity)
        np.clip(alpha, 0.0, opacity, out=alpha)
        if callable(fill):
            col = fill(v[:, None], du)
        else:
            col = fill
        if shade:
            rel = du / half
            rel *= rel
            rel *= F32(-shade)
            rel += F32(1.0)
            col = rel[..., None] * col
        else:
            col = np.broadcast_to(col, alpha.shape + (3,)).copy()
        self._blend(r0, c0, np.broadcast_to(alpha, (r1 - r0, c1 - c0)), col)

    def ellipse(self, vc: float, uc: float, rv: float, ru: float, fill: Fill,
                shade: float = 0.3, opacity: float = 1.0) -> None:
        r0, r1 = self._rows(vc - rv, vc + rv)
        c0, c1 = self._cols(uc - ru, uc + ru)
        if r1 <= r0 or c1 <= c0:
            return
        dv = (self.v[r0:r1] - F32(vc)) * F32(1.0 / rv)
        du = (self.u[c0:c1] - F32(uc)) * F32(1.0 / ru)
        d2 = np.add.outer(dv * dv, du * du)
        alpha = np.sqrt(d2)
        alpha *= F32(-min(rv, ru) * self.height * opacity)
        alpha += F32((min(rv, ru) * self.height + 0.5) * opacity)
        np.clip(alpha, 0.0, opacity, out=alpha)
        if shade:
            np.minimum(d2, F32(1.0), out=d2)
            d2 *= F32(-shade)
            d2 += F32(1.0)
            col = d2[..., None] * fill
        else:
            col = np.broadcast_to(fill, alpha.shape + (3,)).copy()
        self._blend(r0, c0, alpha, col)


def _pattern_fill(ident: Identity, v0: float, view: str) -> Fill:
    """The upper garment's texture as a function of body coordinates."""
    c1, c2 = ident.upper, ident.upper2
    f = F32(ident.pattern_freq)
    diff = (c2 - c1).astype(F32)
    kind = ident.pattern
    if kind == "hstripes":
        def fill(v: np.ndarray, du: np.ndarray) -> np.ndarray:
            m = ((v - F32(v0)) * f % F32(1.0)) < F32(0.45)
            return c1 + m[..., None] * diff
    elif kind == "vstripes":
        def fill(v: np.ndarray, du: np.ndarray) -> np.ndarray:
            m = ((du + F32(1.0)) * f % F32(1.0)) < F32(0.4)
            return c1 + m[..., None] * diff
    elif kind == "checks":
        def fill(v: np.ndarray, du: np.ndarray) -> np.ndarray:
            m = (((v - F32(v0)) * f % F32(1.0)) < F32(0.5)) ^ (((du + F32(1.0)) * f % F32(1.0))
                                                                < F32(0.5))
            return c1 + m[..., None] * (diff * F32(0.7))
    elif kind == "twotone":
        def fill(v: np.ndarray, du: np.ndarray) -> np.ndarray:
            m = np.broadcast_to(v < F32(v0 + 0.09), np.broadcast_shapes(v.shape, du.shape))
            return c1 + m[..., None] * diff
    else:
        return c1
    return fill


# --------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------


def _rect(img: np.ndarray, y0: float, y1: float, x0: float, x1: float, col, alpha=1.0) -> None:
    h, w = img.shape[:2]
    a, b = max(int(y0), 0), min(int(y1), h)
    c, d = max(int(x0), 0), min(int(x1), w)
    if b > a and d > c:
        win = img[a:b, c:d]
        win += F32(alpha) * (np.asarray(col, F32) - win)


def _vgrad(h: int, top: Color, bottom: Color) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h, dtype=F32)[:, None]
    return (top[None, :] * (1 - t) + bottom[None, :] * t).astype(F32)


def _scene_indoor(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    img = np.empty((h, w, 3), F32)
    horizon = int(h * rng.uniform(0.55, 0.75))
    wall = _hsv(rng.uniform(0.05, 0.15), rng.uniform(0.05, 0.25), rng.uniform(0.7, 0.95))
    img[:horizon] = _vgrad(horizon, wall * 1.05, wall * 0.9)[:, None, :]
    x = 0.0
    while x < w:  # shop fronts and pillars along the wall
        width = rng.uniform(0.4, 1.2) * h * 0.5
        if rng.random() < 0.6:
            shop = _hsv(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.5, 1.0))
            _rect(img, h * rng.uniform(0.05, 0.2), horizon - 2, x + 2, x + width - 2, shop)
            for _ in range(rng.integers(1, 4)):  # goods in the window
                gx = x + rng.uniform(0.1, 0.8) * width
                gy = rng.uniform(0.3, 0.8) * horizon
                _rect(img, gy, gy + h * 0.08, gx, gx + width * 0.15,
                      _hsv(rng.random(), 0.7, rng.uniform(0.3, 1.0)))
        else:
            _rect(img, 0, horizon, x + width * 0.4, x + width * 0.6, wall * 0.8)
        x += width
    for _ in range(rng.integers(2, 6)):  # ceiling lights
        lx = rng.uniform(0, w)
        _rect(img, 0, h * 0.03, lx, lx + h * 0.08, (1.0, 0.98, 0.9))
    floor = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.0, 0.2), rng.uniform(0.55, 0.85))
    img[horizon:] = _vgrad(h - horizon, floor * 0.9, floor * 1.05)[:, None, :]
    tile = max(int(h * rng.uniform(0.06, 0.12)), 2)
    ys, xs = np.mgrid[horizon:h, 0:w]
    checker = (((ys - horizon) // tile + xs // (tile * 2)) % 2).astype(F32)
    img[horizon:] *= (1.0 - 0.07 * checker)[..., None]
    return img


def _scene_outdoor(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    img = np.empty((h, w, 3), F32)
    ground = int(h * rng.uniform(0.5, 0.72))
    sky = _hsv(rng.uniform(0.55, 0.62), rng.uniform(0.1, 0.4), rng.uniform(0.7, 0.95))
    img[:ground] = _vgrad(ground, sky * 0.85, sky)[:, None, :]
    x = 0.0
    while x < w:  # building facades with windows
        width = rng.uniform(0.6, 1.6) * h * 0.5
        roof = h * rng.uniform(-0.1, 0.25)
        wall = (_hsv(rng.uniform(0.02, 0.08), rng.uniform(0.3, 0.6), rng.uniform(0.35, 0.6))
                if rng.random() < 0.5 else _hsv(0.1, rng.uniform(0.0, 0.1), rng.uniform(0.4, 0.7)))
        _rect(img, roof, ground, x, x + width, wall)
        step = h * rng.uniform(0.1, 0.16)
        win_col = _hsv(0.58, 0.2, rng.uniform(0.15, 0.4))
        wy = roof + step * 0.4
        while wy < ground - step * 0.8:
            wx = x + step * 0.3
            while wx < x + width - step * 0.6:
                _rect(img, wy, wy + step * 0.55, wx, wx + step * 0.45, win_col)
                wx += step * 0.8
            wy += step
        x += width
    for _ in range(rng.integers(0, 3)):  # trees
        tx, ty = rng.uniform(0, w), rng.uniform(0.1, 0.45) * h
        r = h * rng.uniform(0.1, 0.2)
        yy, xx = np.ogrid[:h, :w]
        m = ((yy - ty) ** 2 + ((xx - tx) * 1.3) ** 2) < r * r
        img[m] = _hsv(rng.uniform(0.22, 0.33), rng.uniform(0.3, 0.6), rng.uniform(0.2, 0.45))
        _rect(img, ty + r * 0.7, ground, tx - r * 0.1, tx + r * 0.1, (0.25, 0.18, 0.12))
    pave = _hsv(0.1, rng.uniform(0.0, 0.1), rng.uniform(0.45, 0.7))
    img[ground:] = _vgrad(h - ground, pave * 0.85, pave)[:, None, :]
    step = max(int(h * rng.uniform(0.05, 0.1)), 2)
    img[ground::step] *= 0.8  # paving joints
    road = ground + int((h - ground) * rng.uniform(0.5, 1.2))
    if road < h:
        _rect(img, road, h, 0, w, _hsv(0.6, 0.05, rng.uniform(0.15, 0.3)))
    if rng.random() < 0.6:  # a cast shadow across part of the scene
        x0 = rng.uniform(0, w)
        _rect(img, 0, h, x0, x0 + rng.uniform(0.2, 0.8) * w, (0.0, 0.0, 0.05), alpha=0.35)
    return img


@lru_cache(maxsize=64)
def _scene(scene: str, seed: int, h: int, w: int) -> np.ndarray:
    """A camera's background panorama (read-only): 3 image widths wide."""
    rng = np.random.default_rng(seed)
    img = (_scene_indoor if scene == "indoor" else _scene_outdoor)(h, w * 3, rng)
    img = np.clip(img, 0.0, 1.0)
    img.setflags(write=False)
    return img


@lru_cache(maxsize=16)
def _noise_bank(h: int, w: int, std: float) -> np.ndarray:
    """Sensor noise (int16, in grey levels); images take a random window of it."""
    rng = np.random.default_rng(12345)
    return np.round(rng.standard_normal((h * 2, w * 2, 3)) * std).astype(np.int16)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _draw_person(cv: _Canvas, ident: Identity, view: str, facing: int,
                 rng: np.random.Generator) -> None:
    b = ident.build
    hip = ident.hip
    hs = ident.head
    side = view == "side"
    d = facing  # +1: walking to the right of the image, -1: to the left
    head_v, head_rv = 0.068 * hs, 0.064 * hs
    head_ru = (0.052 if side else 0.047) * hs
    sh_v = head_v + head_rv + 0.025  # shoulder line
    sw = (0.075 if side else 0.118) * b  # shoulder half width
    ww = (0.07 if side else 0.098) * b  # waist half width
    upper_fill = _pattern_fill(ident, sh_v, view)
    skin, hair = ident.skin, ident.hair
    leg_end = 0.965

    # shadow on the ground
    cv.ellipse(0.995, 0.0, 0.018, 0.16 * b, fill=np.zeros(3, F32), shade=0.0, opacity=0.35)

    # long hair behind the shoulders (front view)
    if ident.hair_style == 1 and view == "front":
        cv.quad(head_v, sh_v + 0.09, 0.0, head_ru * 1.15, head_ru * 1.3, fill=hair)
    if ident.backpack is not None and view == "front":  # visible beside the shoulders
        cv.quad(sh_v + 0.01, sh_v + 0.2, 0.0, sw + 0.012, fill=ident.backpack * F32(0.7))

    # legs and shoes
    lower = ident.lower
    leg_fill = lower if ident.lower_type == "trousers" else skin
    leg_hw = 0.043 * b
    if side:
        st = ident.stride * rng.uniform(0.6, 1.2)
        for sgn, dark in ((-1, 0.8), (1, 1.0)):
            slope = sgn * st / (leg_end - hip)
            cv.quad(hip, leg_end, 0.0, leg_hw, leg_hw * 0.8, slope=slope,
                    fill=leg_fill * F32(dark))
            if ident.lower_type == "shorts":
                cv.quad(hip, hip + 0.17, 0.0, leg_hw * 1.15, slope=slope,
                        fill=lower * F32(dark))
            cv.quad(0.95, 1.0, sgn * st + d * 0.025, 0.04, fill=ident.shoes * F32(dark),
                    shade=0.2)
    else:
        gap = 0.045 * b
        for sgn in (-1, 1):
            cv.quad(hip, leg_end, sgn * gap, leg_hw, leg_hw * 0.8, slope=sgn * 0.01,
                    fill=leg_fill)
            if ident.lower_type == "shorts":
                cv.quad(hip, hip + 0.17, sgn * gap, leg_hw * 1.15, fill=lower)
            cv.quad(0.955, 1.0, sgn * (gap + 0.008), 0.036, fill=ident.shoes, shade=0.2)
    if ident.lower_type == "skirt":
        cv.quad(hip - 0.02, hip + 0.2, 0.0, ww * 1.05, ww * 1.6 if not side else ww * 1.8,
                fill=lower)
    elif not side:  # crotch / hips
        cv.quad(hip - 0.02, hip + 0.04, 0.0, ww, ww * 1.02, fill=lower)

    # far arm (side view)
    arm_hw = 0.028 * b
    arm_end = hip + 0.03
    swing = rng.uniform(-0.12, 0.12)
    sleeve_end = arm_end - 0.04 if ident.long_sleeves else sh_v + 0.11
    if side:
        cv.quad(sh_v, arm_end, -d * 0.01, arm_hw, slope=-swing, fill=skin * F32(0.75))
        cv.quad(sh_v, sleeve_end, -d * 0.01, arm_hw * 1.1, slope=-swing,
                fill=ident.upper * F32(0.75))

    # torso
    cv.quad(sh_v - 0.01, hip + 0.01, 0.0, sw, ww, fill=upper_fill)
    if ident.jacket and view == "front":  # open jacket: inner shirt strip
        cv.quad(sh_v + 0.01, hip, 0.0, 0.028 * b, 0.024 * b, fill=ident.upper2, shade=0.1)
    if ident.pattern == "logo" and view == "front":
        cv.ellipse(sh_v + 0.1, 0.0, 0.035, 0.035, fill=ident.upper2, shade=0.1)
    if ident.backpack is not None:
        bp = ident.backpack
        if view == "back":
            cv.quad(sh_v + 0.015, sh_v + 0.24, 0.0, sw * 0.8, sw * 0.85, fill=bp, shade=0.3)
            cv.quad(sh_v + 0.12, sh_v + 0.22, 0.0, sw * 0.55, fill=bp * F32(0.75), shade=0.2)
        elif side:
            cv.quad(sh_v + 0.01, sh_v + 0.23, -d * (sw + 0.035), 0.05, fill=bp, shade=0.3)
        else:  # straps only
            for sgn in (-1, 1):
                cv.quad(sh_v - 0.005, sh_v + 0.17, sgn * sw * 0.55, 0.011, fill=bp, shade=0.0)

    # arms beside the torso (front / back), near arm (side)
    if side:
        cv.quad(sh_v, arm_end, d * 0.005, arm_hw, slope=swing, fill=skin)
        cv.quad(sh_v, sleeve_end, d * 0.005, arm_hw * 1.1, slope=swing, fill=ident.upper)
    else:
        for sgn in (-1, 1):
            ua = sgn * (sw + arm_hw * 0.6)
            cv.quad(sh_v + 0.01, arm_end, ua, arm_hw, arm_hw * 0.85, slope=sgn * 0.04,
                    fill=skin)
            cv.quad(sh_v + 0.005, sleeve_end, ua, arm_hw * 1.15, arm_hw,
                    slope=sgn * 0.04, fill=upper_fill)

    # bag on its side (a shoulder strap across the torso)
    if ident.bag is not None:
        s = ident.bag_side * (-1 if view == "back" else 1)
        visible = not side or s == d
        if visible:
            ub = 0.0 if side else s * (sw + 0.055)
            if not side:
                cv.quad(sh_v, hip - 0.03, -s * sw * 0.6, 0.008,
                        slope=(ub + s * sw * 0.6) / (hip - 0.03 - sh_v), fill=ident.bag * F32(0.6),
                        shade=0.0)
            cv.quad(hip - 0.06, hip + 0.07, ub, 0.045, 0.05, fill=ident.bag, shade=0.25)

    # neck and head
    cv.quad(head_v + head_rv * 0.7, sh_v + 0.005, 0.0, 0.022 * hs, fill=skin * F32(0.9),
            shade=0.2)
    hr = 0.9 if ident.hair_style == 2 else 1.07
    if view == "back":
        cv.ellipse(head_v, 0.0, head_rv, head_ru, fill=skin)
        cv.ellipse(head_v - 0.006, 0.0, head_rv * hr, head_ru * hr, fill=hair)
        if ident.hair_style == 1:
            cv.quad(head_v, sh_v + 0.1, 0.0, head_ru * 1.1, head_ru * 1.2, fill=hair)
    elif side:
        cv.ellipse(head_v - 0.004, -d * 0.006, head_rv * hr, head_ru * hr, fill=hair)
        cv.ellipse(head_v + 0.01, d * 0.014, head_rv * 0.85, head_ru * 0.8, fill=skin)
        if ident.hair_style == 1:
            cv.quad(head_v, sh_v + 0.08, -d * 0.03, 0.03, fill=hair)
    else:
        cv.ellipse(head_v - 0.006, 0.0, head_rv * hr, head_ru * hr, fill=hair)
        cv.ellipse(head_v + 0.012, 0.0, head_rv * 0.86, head_ru * 0.9, fill=skin)
        if head_rv * cv.ph > 5:  # eyes
            for sgn in (-1, 1):
                cv.ellipse(head_v + 0.01, sgn * 0.018, 0.006, 0.008, fill=skin * F32(0.35),
                           shade=0.0)
    if ident.hat is not None:
        cv.quad(head_v - head_rv * 1.05, head_v - head_rv * 0.25, 0.0, head_ru * 0.9,
                head_ru * 1.08, fill=ident.hat)
        brim_u = d * head_ru * 0.7 if side else 0.0
        brim_w = head_ru * (0.9 if side else 1.15)
        cv.quad(head_v - head_rv * 0.35, head_v - head_rv * 0.2, brim_u, brim_w,
                fill=ident.hat * F32(0.8), shade=0.1)


def _occlude(img: np.ndarray, rng: np.random.Generator, scene: str) -> None:
    h, w = img.shape[:2]
    kind = rng.choice(["bottom", "side", "pole"], p=[0.45, 0.4, 0.15])
    col = _hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.15, 0.8))
    if kind == "bottom":  # bench, bin, car bonnet, railing
        y0 = h * rng.uniform(0.65, 0.85)
        _rect(img, y0, h, 0, w, col)
        _rect(img, y0, y0 + h * 0.03, 0, w, col * 1.2)
    elif kind == "side":  # another passer-by
        x0 = w * rng.uniform(0.65, 0.8)
        if rng.random() < 0.5:
            _rect(img, h * rng.uniform(0.1, 0.3), h, x0, w, col)
            _rect(img, h * 0.55, h, x0 + 2, w, col * 0.6)
        else:
            _rect(img, h * rng.uniform(0.1, 0.3), h, 0, w - x0, col)
            _rect(img, h * 0.55, h, 0, w - x0 - 2, col * 0.6)
    else:
        x0 = w * rng.uniform(0.05, 0.85)
        _rect(img, 0, h, x0, x0 + w * 0.09, (0.3, 0.3, 0.32) if scene == "outdoor" else col)


def _render(style: DomainStyle, ident: Identity | None, cam: Camera, rng: np.random.Generator,
            height: int, width: int, junk: bool = False,
            track: np.random.Generator | None = None) -> np.ndarray:
    """One crop as a uint8 ``(height, width, 3)`` array.

    ``track`` draws what one tracklet (consecutive detections of a person walking past a
    camera) shares: viewpoint, facing, scale, position and the background behind the
    person; ``rng`` then adds the per-frame jitter (walking phase, small shifts, light
    flicker, occlusions). Without ``track`` every image is a tracklet of its own.
    """
    res = style.resolution
    h, w = max(int(round(height * res)), 8), max(int(round(width * res)), 4)
    pano = _scene(style.scene, cam.scene_seed, h, w)
    tr = track if track is not None else rng
    x0 = int(tr.integers(0, pano.shape[1] - w))
    mirror = tr.random() < 0.5
    view = VIEWS[min(int(np.searchsorted(np.cumsum(cam.view_probs), tr.random())), 2)]
    facing = 1 if tr.random() < 0.5 else -1
    scale = cam.scale * tr.uniform(0.94, 1.06)
    top_at = tr.uniform(0.25, 0.75)
    cx_at = 0.5 + tr.normal(0.0, 0.05)
    if track is not None:  # the frame's own jitter around the tracklet's state
        x0 = int(np.clip(x0 + rng.integers(-w // 8, w // 8 + 1), 0, pano.shape[1] - w - 1))
        scale *= rng.uniform(0.98, 1.02)
        top_at = float(np.clip(top_at + rng.normal(0.0, 0.05), 0.0, 1.0))
        cx_at += rng.normal(0.0, 0.015)
    img = pano[:, x0:x0 + w].copy()
    if mirror:
        img = img[:, ::-1].copy()
    ph = h * scale
    top = (h - ph) * top_at
    cx = w * cx_at
    if junk:  # a bad detection: a body part far too large, or far off-centre
        if rng.random() < 0.5:
            ph *= rng.uniform(1.8, 3.0)
            top = -ph * rng.uniform(0.1, 0.5)
        else:
            cx = w * rng.choice([-0.1, 1.1])
    if ident is not None:
        cv = _Canvas(img, top, ph, cx, cam.tilt * rng.uniform(0.97, 1.03))
        _draw_person(cv, ident, view, facing, rng)
    if rng.random() < cam.occlusion_prob:
        _occlude(img, rng, style.scene)

    # light (camera gain and cast, domain colour temperature, a horizontal gradient) and the
    # domain's tone curve (saturation, contrast, haze), fused into few whole-image operations:
    # out = c * (s * x + (1 - s) * grey(x)) + 0.5 * (1 - c) + haze, x = tinted image
    sat = style.saturation_gain
    con = style.contrast * rng.uniform(0.95, 1.05)
    gain = cam.gain * rng.uniform(0.93, 1.07)
    xs = np.linspace(-0.5, 0.5, w, dtype=F32)
    grad = F32(1.0) + F32(cam.light_slope + rng.normal(0.0, 0.05)) * xs
    tint = cam.cast * np.asarray(style.temperature, F32) * F32(gain * con * sat * 255.0)
    img *= grad[None, :, None] * tint[None, None, :]
    if sat != 1.0:
        grey = img[..., 0] + img[..., 1]
        grey += img[..., 2]
        grey *= F32((1.0 - sat) / (3.0 * sat))
        img += grey[..., None]
    img += F32((0.5 * (1.0 - con) + style.haze) * 255.0 + 0.5)
    radius = cam.blur * rng.uniform(0.7, 1.3) * h / 128.0
    if radius > 0.25:
        _blur(img, radius)
    np.clip(img, 0.0, 255.0, out=img)
    out = img.astype(np.uint8)

    if (h, w) != (height, width):
        out = np.asarray(Image.fromarray(out).resize((width, height), Image.BILINEAR))
    if style.noise_std > 0:
        bank = _noise_bank(height, width, round(style.noise_std * 255.0, 3))
        ny, nx = int(rng.integers(0, height)), int(rng.integers(0, width))
        noisy = bank[ny:ny + height, nx:nx + width] + out
        np.clip(noisy, 0, 255, out=noisy)
        out = noisy.astype(np.uint8)
    return out


def _blur(img: np.ndarray, sigma: float) -> None:
    """In-place separable Gaussian-like blur: repeated 3-tap ``[w, 1 - 2w, w]`` passes."""
    passes = int(np.ceil(sigma * sigma / 0.6))
    wt = F32(sigma * sigma / (2.0 * passes))  # the variance of one pass is 2 w
    for _ in range(passes):
        for axis in (0, 1):
            src = img.copy()
            img *= F32(1.0) - F32(2.0) * wt
            lo = [slice(None)] * 2
            hi = [slice(None)] * 2
            lo[axis], hi[axis] = slice(0, -1), slice(1, None)
            img[tuple(hi)] += wt * src[tuple(lo)]
            img[tuple(lo)] += wt * src[tuple(hi)]
            first = [slice(None)] * 2
            last = [slice(None)] * 2
            first[axis], last[axis] = slice(0, 1), slice(-1, None)
            img[tuple(first)] += wt * src[tuple(first)]
            img[tuple(last)] += wt * src[tuple(last)]


def render_person(domain: str | DomainStyle, pid: int, camid: int, *, index: int = 0,
                  seed: int = 0, height: int = 128, width: int = 64) -> np.ndarray:
    """Render image ``index`` of identity ``pid`` seen by camera ``camid`` (uint8 HxWx3)."""
    style = _get_style(domain)
    ident = sample_identity(style, pid, seed)
    cam = sample_camera(style, camid, seed)
    rng = np.random.default_rng([seed, _domain_key(style), 4, pid + 2, camid, index])
    return _render(style, ident, cam, rng, height, width)


# --------------------------------------------------------------------------------------------
# Dataset generation
# --------------------------------------------------------------------------------------------

DEFAULT_TRAIN_IDS = 250
DEFAULT_TEST_IDS = 100
DEFAULT_IMAGES_PER_ID = 20


def default_cache_dir() -> Path:
    """``$REIDLAB_CACHE/synthetic`` if set, else ``~/.cache/reidlab/synthetic``."""
    base = os.environ.get("REIDLAB_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "reidlab"
    return root / "synthetic"


@dataclass(frozen=True)
class _Item:
    folder: str
    name: str
    pid: int  # label written in the file name (0 distractor, -1 junk)
    ident_key: int  # key of the identity to draw (-1: none)
    camid: int
    index: int
    tracklet: int = -1  # images of one identity, camera and tracklet share its state


def _plan(style: DomainStyle, num_train_ids: int, num_test_ids: int, images_per_id: int,
          seed: int) -> list[_Item]:
    """File names and contents of the whole dataset, deterministic in ``seed``."""
    rng = np.random.default_rng([seed, _domain_key(style), 3])
    ncam = style.num_cameras
    items: list[_Item] = []
    frame = [0] * ncam

    def name(pid: int, cam: int) -> str:
        frame[cam] += int(rng.integers(1, 40))
        label = "-1" if pid < 0 else f"{pid:05d}"
        return f"{label}_c{cam + 1}s1_{frame[cam]:06d}_00.jpg"

    def cameras_of(count: int) -> list[int]:
        k_max = min(ncam, max(2, images_per_id // 2))
        k = int(rng.integers(2, k_max + 1))
        cams = sorted(rng.choice(ncam, size=k, replace=False).tolist())
        per = cams * 2 + rng.choice(cams, size=count - 2 * k).tolist()  # >= 2 per camera
        return sorted(per)

    def tracklets(cams: list[int]) -> list[int]:
        """Tracklet of each image: a camera's images of one person are cut into runs of
        ``tracklet_length`` consecutive frames (0 or 1: every image on its own)."""
        length, out, within = style.tracklet_length, [], {}
        for cam in cams:
            within[cam] = within.get(cam, -1) + 1
            out.append(within[cam] // length if length > 1 else -1)
        return out

    base = style.pid_base
    for i in range(num_train_ids):
        pid = base + 1 + i
        cams = cameras_of(images_per_id)
        for j, (cam, tr) in enumerate(zip(cams, tracklets(cams), strict=True)):
            items.append(_Item("bounding_box_train", name(pid, cam), pid, pid, cam, j, tr))
    for i in range(num_test_ids):
        pid = base + 1 + num_train_ids + i
        seen: set[int] = set()
        cams = cameras_of(images_per_id)
        for j, (cam, tr) in enumerate(zip(cams, tracklets(cams), strict=True)):
            folder = "bounding_box_test" if cam in seen else "query"
            seen.add(cam)
            items.append(_Item(folder, name(pid, cam), pid, pid, cam, j, tr))
    n_extra = max(2, num_test_ids // 10)
    for k in range(n_extra):  # distractors: people outside the id pool
        cam = int(rng.integers(ncam))
        key = base + PID_CAPACITY + 1 + k  # outside every labelled range
        items.append(_Item("bounding_box_test", name(0, cam), 0, key, cam, 0))
    for k in range(n_extra):  # junk: bad detections
        cam = int(rng.integers(ncam))
        key = -1 if k % 3 == 0 else base + PID_CAPACITY + 1 + n_extra + k
        items.append(_Item("bounding_box_test", name(-1, cam), -1, key, cam, 0))
    return items


def _params(style: DomainStyle, num_train_ids: int, num_test_ids: int, images_per_id: int,
            height: int, width: int, seed: int) -> dict:
    return {"version": GENERATOR_VERSION, "domain": style.name, "style": style.to_json(),
            "num_train_ids": num_train_ids, "num_test_ids": num_test_ids,
            "images_per_id": images_per_id, "height": height, "width": width, "seed": seed}


def dataset_dir_name(domain: str | DomainStyle, *, num_train_ids: int = DEFAULT_TRAIN_IDS,
                     num_test_ids: int = DEFAULT_TEST_IDS,
                     images_per_id: int = DEFAULT_IMAGES_PER_ID, height: int = 128,
                     width: int = 64, seed: int = 0) -> str:
    """``<domain>-<hash>``: the cache folder name for these parameters."""
    style = _get_style(domain)
    params = _params(style, num_train_ids, num_test_ids, images_per_id, height, width, seed)
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return f"{style.name}-{digest}"


def _is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An advisory inter-process lock so that one process generates while the others wait."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: rely on the atomic rename alone
        yield
        return
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:  # e.g. a file system without locks: the rename keeps it safe
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_dataset(target: Path, style: DomainStyle, items: Sequence[_Item], height: int,
                   width: int, seed: int) -> None:
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        (target / folder).mkdir(parents=True, exist_ok=True)
    cams = [sample_camera(style, c, seed) for c in range(style.num_cameras)]
    dkey = _domain_key(style)
    idents: dict[int, Identity] = {}
    for it in items:
        ident = None
        if it.ident_key >= 0:
            ident = idents.get(it.ident_key)
            if ident is None:
                ident = idents[it.ident_key] = sample_identity(style, it.ident_key, seed)
        rng = np.random.default_rng([seed, dkey, 4, it.ident_key + 2, it.camid, it.index])
        track = (np.random.default_rng([seed, dkey, 5, it.ident_key + 2, it.camid, it.tracklet])
                 if it.tracklet >= 0 else None)
        arr = _render(style, ident, cams[it.camid], rng, height, width, junk=it.pid == -1,
                      track=track)
        Image.fromarray(arr).save(target / it.folder / it.name, quality=style.jpeg_quality)


def generate_domain(domain: str | DomainStyle, root: str | Path | None = None, *,
                    num_train_ids: int = DEFAULT_TRAIN_IDS, num_test_ids: int = DEFAULT_TEST_IDS,
                    images_per_id: int = DEFAULT_IMAGES_PER_ID, height: int = 128,
                    width: int = 64, seed: int = 0) -> Path:
    """Generate a synthetic domain in the Market-1501 layout (once) and return its top folder.

    Args:
        domain: a key of :data:`SYNTHETIC_DOMAINS` (or a :class:`DomainStyle`).
        root: the cache folder holding generated datasets; ``None`` for
            :func:`default_cache_dir`. The dataset goes to ``root/<domain>-<hash>``.
        num_train_ids / num_test_ids: identities of the train and the test split (disjoint).
        images_per_id: images of each identity, spread over 2 or more cameras with at least
            two images per camera, so every query has a gallery match in another camera.
        height / width: image size in pixels.
        seed: everything (identities, cameras, images) is a deterministic function of it.

    The test split follows Market-1501: one query image per test id and camera, all other
    images in the gallery, plus a few distractors (pid 0) and junk images (pid -1).
    """
    style = _get_style(domain)
    if num_train_ids < 1 or num_test_ids < 1:
        raise ValueError("num_train_ids and num_test_ids must be at least 1")
    if num_train_ids + num_test_ids > PID_CAPACITY - 1000:
        raise ValueError(f"at most {PID_CAPACITY - 1000} identities per domain")
    if images_per_id < 4:
        raise ValueError("images_per_id must be at least 4 (two cameras, two images each)")
    if height < 16 or width < 8:
        raise ValueError("images must be at least 16x8 pixels")
    root = Path(root).expanduser() if root is not None else default_cache_dir()
    name = dataset_dir_name(style, num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                            images_per_id=images_per_id, height=height, width=width, seed=seed)
    final = root / name
    if _is_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root / f".{name}.lock"):
        if _is_complete(final):  # another process finished while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            items = _plan(style, num_train_ids, num_test_ids, images_per_id, seed)
            _write_dataset(tmp, style, items, height, width, seed)
            params = _params(style, num_train_ids, num_test_ids, images_per_id, height, width,
                             seed)
            params["num_images"] = len(items)
            (tmp / "params.json").write_text(json.dumps(params, indent=1, sort_keys=True))
            (tmp / COMPLETE_MARKER).write_text("ok\n")
            if final.exists():  # an incomplete leftover: move it out of the way
                trash = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
                final.rename(trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not _is_complete(final):
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


class SyntheticReID(MarketLayoutDataset):
    """A synthetic re-ID domain, generated on first use and parsed as a Market-1501 folder.

    Args:
        domain: ``"mall"`` or ``"street"`` (see :data:`SYNTHETIC_DOMAINS`).
        root: cache folder for generated datasets (default :func:`default_cache_dir`).
        num_train_ids, num_test_ids, images_per_id, height, width, seed: see
            :func:`generate_domain`.

    ``train``, ``query`` and ``gallery`` are exactly what :class:`Market1501` gives for the
    generated folder: camera ids 0-based, train ids relabelled to ``0..n-1``, query and
    gallery ids in the domain's own range (``pid_base + k``; 0 for distractors).
    """

    name = "synthetic"

    def __init__(self, domain: str = "mall", root: str | Path | None = None, *,
                 num_train_ids: int = DEFAULT_TRAIN_IDS, num_test_ids: int = DEFAULT_TEST_IDS,
                 images_per_id: int = DEFAULT_IMAGES_PER_ID, height: int = 128,
                 width: int = 64, seed: int = 0) -> None:
        self.style = _get_style(domain)
        self.domain = self.style.name
        self.name = f"synthetic-{self.domain}"
        top = generate_domain(self.style, root, num_train_ids=num_train_ids,
                              num_test_ids=num_test_ids, images_per_id=images_per_id,
                              height=height, width=width, seed=seed)
        super().__init__(top)


# --------------------------------------------------------------------------------------------
# Preview
# --------------------------------------------------------------------------------------------


def render_identity_grid(domain: str | DomainStyle, num_ids: int = 6, *, seed: int = 0,
                         height: int = 128, width: int = 64) -> np.ndarray:
    """A uint8 contact sheet: one row per identity, one column per camera."""
    style = _get_style(domain)
    rows = []
    for i in range(num_ids):
        pid = style.pid_base + 1 + i
        rows.append(np.concatenate(
            [render_person(style, pid, c, index=i, seed=seed, height=height, width=width)
             for c in range(style.num_cameras)], axis=1))
    return np.concatenate(rows, axis=0)


def save_preview(domains: str | Sequence[str] = ("mall", "street"), path: str | Path =
                 "synthetic_preview.png", *, num_ids: int = 6, seed: int = 0,
                 height: int = 128, width: int = 64) -> Path:
    """Save a PNG with one contact sheet per domain side by side (ids x cameras)."""
    if isinstance(domains, str):
        domains = [domains]
    sheets = [render_identity_grid(d, num_ids, seed=seed, height=height, width=width)
              for d in domains]
    gap = 8
    total_w = sum(s.shape[1] for s in sheets) + gap * (len(sheets) - 1)
    canvas = np.full((max(s.shape[0] for s in sheets), total_w, 3), 255, np.uint8)
    x = 0
    for s in sheets:
        canvas[:s.shape[0], x:x + s.shape[1]] = s
        x += s.shape[1] + gap
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path
