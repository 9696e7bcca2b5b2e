"""Procedural synthetic chest radiographs (PA view): the project's embedded default data set.

Each case (seed, index) is one patient. Its anatomy and every nuisance factor (image size, framing,
patient size and position, exposure, contrast, gamma, noise, collimation, text and side marker) come from
``np.random.default_rng([seed, index, 0])``, whatever the label: nuisance is drawn from one distribution for
both classes and is larger than any class difference in global statistics. What the label adds is drawn
from ``default_rng([seed, index, 1])``:

- PNEUMONIA: a lesion -- patchy, textured consolidation with irregular borders inside a lobe, air
  bronchograms, or an interstitial (reticular) pattern; from small foci to a lobe, in one or both lungs;
- NORMAL: the same lesion is drawn but not rendered; instead non-lesion opacity outside the lung
  parenchyma (breast and chest-wall soft tissue, scapulae, a larger heart) adds the same total brightness.
  So the classes differ in where and what the opacity is, never in how much of it there is.

Geometry lives in "patient units": u runs left to right across the image (0 on the midline, the chest is
about 0.9 wide), v runs downwards; both share one pixels-per-unit scale. The patient is built as an
attenuation map (soft tissue + bone + opacity - air) on a working grid of at most ``WORK_LONG`` px, exposed
like a film (brightness = 1 - exp(-k * attenuation), with gain/gamma/offset, vignetting and collimation),
upsampled to the output size, then given detector noise, text and a marker at full size.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter, maximum_filter
from tqdm import tqdm

from .vocabulary import CLASSES, STUDY_SPLIT

GENERATOR_VERSION = 3  # part of the cache key of generated sets: bump whenever a render changes
DEFAULT_SIZE = 512
DEFAULT_DIFFICULTY = 0.0  # the densest lesions: from random initialisation a model needs them (README's curve)
PATTERNS = ("lobar", "patchy", "interstitial")
# the non-lesion opacities of NORMAL cases, outside the lung parenchyma, each with the most it adds at its
# densest point (attenuation units): what that anatomy can plausibly add, so that a big lesion is matched by
# several shadows rather than by one white blot
SHADOWS = {"breasts": 0.35, "scapulae": 0.3, "heart": 0.4, "soft_tissue": 0.25}
MASK_LUNG, MASK_LESION = 128, 255
WORK_LONG = 256  # anatomy is smooth: build it on a small grid, upsample, add noise at full size
BICUBIC_REACH = 2  # source pixels a bicubic upsampling draws on: how far a lesion's change can spread

_F = np.float32


# ---------------------------------------------------------------- small helpers

def _soft(sd, width):
    """0 outside, 1 inside a region given by a signed distance (positive inside), ramped over `width`."""
    return np.clip(sd * (1.0 / width) + 0.5, 0.0, 1.0)


def _resize(field, shape, resample=Image.BILINEAR):
    if field.shape == tuple(shape):
        return field
    h, w = shape
    return np.asarray(Image.fromarray(np.ascontiguousarray(field, dtype=_F)).resize((w, h), resample))


def _noise_field(rng, grid_long, shape, sigma):
    """Unit-variance smooth noise, drawn on a small grid fixed in patient terms, upsampled to `shape`."""
    h, w = shape
    grid = (max(4, round(grid_long * h / max(h, w))), max(4, round(grid_long * w / max(h, w))))
    n = gaussian_filter(rng.standard_normal(grid, dtype=_F), sigma, mode="wrap")
    return _resize(n / (n.std() + 1e-6), shape)


def _lerp(x0, x1, t):
    return x0 + (x1 - x0) * t


# ---------------------------------------------------------------- the frame: nuisance of the acquisition

def _draw_frame(rng, size):
    """Image size, framing, patient size and position, exposure and detector: class-independent nuisance."""
    long_side = size * rng.uniform(0.85, 1.0)
    aspect = rng.uniform(0.8, 1.05)  # h / w
    h, w = (long_side * aspect, long_side) if aspect <= 1 else (long_side, long_side / aspect)
    return dict(
        h=round(h), w=round(w),
        zoom=rng.uniform(0.9, 1.15),               # image width in patient units: how big the patient looks
        shift=rng.normal(0.0, 0.035, 2),
        tilt=math.radians(float(np.clip(rng.normal(0.0, 1.5), -4, 4))),
        top=rng.uniform(-0.03, 0.12),             # patient units of neck above the shoulders
        k=rng.uniform(1.5, 2.6),                  # beam hardness: how much dense regions saturate
        gain=rng.uniform(0.72, 1.15), offset=rng.uniform(-0.14, 0.08), gamma=math.exp(rng.normal(0.0, 0.25)),
        vignette=rng.uniform(0.0, 0.3), vig_center=rng.normal(0.0, 0.15, 2),
        noise=rng.uniform(0.01, 0.04), grain=rng.uniform(1.0, 2.0),
        collimation=_draw_collimation(rng),
        text=_draw_text(rng),
        marker=dict(glyph=_GLYPHS[str(rng.choice(["L", "R"]))], corner=int(rng.integers(4)),
                    scale=rng.uniform(0.03, 0.05), level=rng.uniform(0.75, 1.0), inset=rng.uniform(0.02, 0.06, 2)),
    )


def _draw_collimation(rng):
    """Unexposed (or cropped) borders: each side's width as a fraction of the image, and their grey level."""
    widths = rng.uniform(0.0, 0.08, 4) * (rng.uniform(size=4) < 0.5) * (rng.uniform() < 0.6)
    return dict(widths=widths, level=rng.uniform(0.0, 1.0), edge=rng.uniform(0.003, 0.015))


def _draw_text(rng):
    """Burnt-in annotation: a few lines of glyph-like blocks in one corner (0 lines: none)."""
    lines = int(rng.integers(0, 3))
    return dict(
        glyphs=[rng.uniform(size=(int(rng.integers(3, 12)), 5, 3)) < 0.55 for _ in range(lines)],
        # characters 1.5-3 % of the image high, as burnt-in labels are
        corner=int(rng.integers(4)), scale=rng.uniform(0.003, 0.006), level=rng.uniform(0.6, 1.0),
        inset=rng.uniform(0.02, 0.08, 2),
    )


# ---------------------------------------------------------------- the patient

def _draw_anatomy(rng):
    """Body habitus, the shape of lungs, heart, ribs and mediastinum, and overlying soft tissue (patient units)."""
    n = rng.normal
    return dict(
        chest=0.45 + n(0, 0.02), neck=0.16 + n(0, 0.012), shoulder_v=0.2 + n(0, 0.02),
        arm_gap=rng.uniform(0.01, 0.07), arm_width=rng.uniform(0.06, 0.12),
        lung_lat=0.375 + n(0, 0.015), lung_taper=0.09 + n(0, 0.015), apex_c=0.2 + n(0, 0.01),
        apex_r=0.155 + n(0, 0.01), apex_h=0.3 + n(0, 0.03),
        apex=0.12 + n(0, 0.012), dome=0.66 + n(0, 0.035), dome_lr=0.025 + n(0, 0.01),
        cp_depth=0.1 + n(0, 0.015), med=0.06 + n(0, 0.006), knob=0.015 + n(0, 0.005),
        heart_top=0.38 + n(0, 0.02), heart_v=0.62 + n(0, 0.02), heart_l=0.11 + n(0, 0.02),
        heart_r=0.035 + n(0, 0.012),
        rib_v0=0.085 + n(0, 0.01), rib_sp=0.052 + n(0, 0.003), rib_growth=0.025 + n(0, 0.006),
        rib_thick=0.45 + n(0, 0.04), rib_rise=0.5 + n(0, 0.05), rib_drop=3.2 + n(0, 0.3),
        rib_jitter=n(0, 0.04, 32).astype(_F), arib_slope=0.5 + n(0, 0.05), arib_phase=rng.uniform(0, 1),
        clav_v=0.2 + n(0, 0.012), clav_tilt=-0.22 + n(0, 0.04),
        soft=rng.uniform(0.85, 1.15), air=rng.uniform(0.75, 1.0), bone=rng.uniform(0.75, 1.25),
        vessels=rng.uniform(0.7, 1.3), bubble=bool(rng.uniform() < 0.7), arms=bool(rng.uniform() < 0.6),
        # the same kinds of overlying density a NORMAL case gets as its matched opacity, in both classes
        breasts=rng.uniform(0.0, 0.3) * (rng.uniform() < 0.6), breast_scale=rng.uniform(0.7, 1.3),
        scapulae=rng.uniform(0.0, 0.25) * (rng.uniform() < 0.6), scapula_scale=rng.uniform(0.7, 1.3),
    )


def _work_shape(h, w):
    scale = min(1.0, WORK_LONG / max(h, w))
    return max(8, round(h * scale)), max(8, round(w * scale))


def _placement(frame, shape):
    """Origin (px), pixels per patient unit and tilt of the patient on a grid of `shape`."""
    h, w = shape
    ppu = w / frame["zoom"]
    return w * (0.5 + frame["shift"][0]), h * frame["shift"][1] + frame["top"] * ppu, ppu, frame["tilt"]


def _coords(frame, shape):
    """Patient coordinates (u, v) of every pixel of a grid of `shape` covering the whole image."""
    h, w = shape
    cx, cy, ppu, tilt = _placement(frame, shape)
    x = (np.arange(w) + 0.5 - cx) / ppu
    y = (np.arange(h) + 0.5 - cy) / ppu
    c, s = math.cos(tilt), math.sin(tilt)
    u = (c * x[None, :] + s * y[:, None]).astype(_F)
    v = (-s * x[None, :] + c * y[:, None]).astype(_F)
    return u, v


def _to_pixels(frame, shape, u, v):
    """Inverse of _coords for points: patient (u, v) to pixel (x, y) on a grid of `shape`."""
    cx, cy, ppu, tilt = _placement(frame, shape)
    c, s = math.cos(tilt), math.sin(tilt)
    return cx + (c * u - s * v) * ppu - 0.5, cy + (s * u + c * v) * ppu - 0.5
# ---------------------------------------------------------------- anatomy

def _lateral_edge(v, a):
    """How far out the lung's lateral edge reaches at height v: the lungs widen towards the bases."""
    t = np.clip((a["dome"] - v) * (1 / (a["dome"] - a["apex"])), 0, 1)
    return a["lung_lat"] - a["lung_taper"] * t * t


def _heart_border(v, a, side, grow=1.0):
    """Lateral reach of the mediastinum: narrow above, bulging out along the heart (mostly on the left)."""
    t = np.clip((v - a["heart_top"]) * (1 / (a["heart_v"] - a["heart_top"])), 0, 1)
    bulge = (a["heart_l"] if side > 0 else a["heart_r"]) * grow
    med = a["med"] + bulge * np.sqrt(1 - (1 - t) ** 2)
    if side > 0:
        med = med + a["knob"] * np.exp(-(((v - a["heart_top"] + 0.04) * (1 / 0.05)) ** 2))
    return med


def _lung_sd(u, v, a, side):
    """Approximate signed distance (patient units) to one lung field; side -1 = image left."""
    lat = side * u
    sd = _lateral_edge(v, a) - lat
    np.minimum(sd, lat - _heart_border(v, a, side), out=sd)
    # the apex: an elliptic dome over the upper lung
    dv = np.minimum(v - a["apex"] - a["apex_h"], 0) * (1 / a["apex_h"])
    da = (lat - a["apex_c"]) * (1 / a["apex_r"])
    np.minimum(sd, (1 - da * da - dv * dv) * 0.07, out=sd)
    dome = a["dome"] + (a["dome_lr"] if side > 0 else 0.0)
    diaphragm = dome + a["cp_depth"] * ((lat - 0.17) * (1 / 0.19)) ** 2
    return np.minimum(sd, diaphragm - v, out=sd)


def _bone_band(inside, width, cortex):
    """A bone seen edge-on: flat body plus brighter cortical rims (inside = distance into the bone)."""
    return _soft(inside, width) * 0.5 + np.exp(-(((inside - cortex) * (1 / cortex)) ** 2)) * 0.5


def _ribs(u, v, a, lung_sd):
    """Posterior ribs (bright arcs with cortical rims) and the fainter anterior ribs."""
    lat = np.abs(u)
    wall = _lateral_edge(v, a) + 0.015
    # posterior ribs: parallel arcs (rise from the spine, then fall along the chest wall), indexed by
    # a warped vertical coordinate with spacing that grows downwards
    bend = np.maximum(lat - 0.1, 0)
    warped = v + a["rib_rise"] * lat - a["rib_drop"] * bend * bend
    sp, g = a["rib_sp"], a["rib_growth"]
    t = np.maximum(warped - a["rib_v0"], -0.5 * sp)
    r = (np.sqrt(sp * sp + 4 * sp * g * t) - sp) * (1 / (2 * sp * g))  # solves sp*k + sp*g*k^2 = t
    k = np.rint(r)
    f = r - k + a["rib_jitter"][np.clip(k, 0, 31).astype(np.int32)]
    local = sp * (1 + 2 * g * np.maximum(r, 0))
    inside = (a["rib_thick"] * 0.5 - np.abs(f)) * local
    reach = _soft(wall + 0.02 - lat, 0.05) * _soft(lat - 0.035, 0.02) * _soft(11.5 - r, 0.3)
    post = _bone_band(inside, 0.006, 0.004) * reach
    # anterior ribs: fainter, sloping down towards the midline, seen over the lungs
    fa = (v - a["arib_slope"] * (wall - lat) - a["rib_v0"]) * (1 / (sp * 1.9)) + a["arib_phase"]
    fa -= np.rint(fa)
    ant = _soft((0.17 - np.abs(fa)) * sp * 1.9, 0.012) * _soft(lat - 0.14, 0.06) * _soft(lung_sd + 0.01, 0.03)
    return post + 0.3 * ant


def _clavicles(u, v, a):
    lat = np.abs(u)
    # S-shaped: rising from the sternal end, flattening, then curving up to the acromion
    centre = a["clav_v"] + a["clav_tilt"] * lat + 0.015 * np.sin((lat - 0.04) * (math.pi / 0.38))
    inside = 0.016 + 0.006 * _soft(lat - 0.3, 0.1) - np.abs(v - centre)
    return _bone_band(inside, 0.006, 0.004) * _soft(lat - 0.04, 0.015) * _soft(0.42 - lat, 0.04)


def _spine(u, v, a):
    au = np.abs(u)
    level = (v - a["rib_v0"]) * (1 / (a["rib_sp"] * 1.05))
    phase = level - np.rint(level)
    disc = _soft(np.abs(phase) - 0.38, 0.12)  # dark disc spaces between vertebral bodies
    pedicle = np.exp(-(((au - 0.028) * (1 / 0.008)) ** 2) - ((phase * (1 / 0.2)) ** 2))
    return _soft(0.04 - au, 0.01) * (0.85 - 0.25 * disc + 0.35 * pedicle)


def _airways(u, v):
    carina = 0.35
    airway = _soft(0.016 - np.abs(u - 0.01 * v), 0.01) * _soft(carina - v, 0.03)
    for side, angle in ((-1, 0.6), (1, 0.9)):
        du, dv = side * math.sin(angle), math.cos(angle)
        t = np.clip(u * du + (v - carina) * dv, 0, 0.09)
        dist = np.hypot(u - t * du, v - carina - t * dv)
        np.maximum(airway, _soft(0.011 - dist, 0.01) * (1 - t * 8), out=airway)
    return airway


def _vessels(rng, frame, shape, a):
    """Lung markings: vessel trees branching out from both hila, thinning towards the periphery."""
    _, _, ppu, _ = _placement(frame, shape)
    img = Image.new("F", shape[::-1], 0.0)
    draw = ImageDraw.Draw(img)
    for side in (-1, 1):
        # main trunks fan out from the hilum: up, out and down (angles from the lateral direction)
        n = 7
        ang = np.linspace(-1.4, 1.5, n) + rng.normal(0, 0.1, n)
        pts = np.tile([side * (a["med"] + 0.06), a["heart_top"] + 0.03], (n, 1)) + rng.normal(0, 0.012, (n, 2))
        length = rng.uniform(0.06, 0.09, n)
        width = np.full(n, 0.011)
        for _ in range(5):
            ends = pts + length[:, None] * np.stack([side * np.cos(ang), np.sin(ang)], 1)
            x0, y0 = _to_pixels(frame, shape, pts[:, 0], pts[:, 1])
            x1, y1 = _to_pixels(frame, shape, ends[:, 0], ends[:, 1])
            px = np.maximum(1, np.rint(width * ppu)).astype(int).tolist()
            ink = (width / 0.011).tolist()
            for seg in zip(x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist(), ink, px):
                draw.line(seg[:4], fill=seg[4], width=seg[5])
            m = len(pts)
            spread = rng.uniform(0.2, 0.55, m)
            ang = np.concatenate([ang + spread, ang - spread * rng.uniform(0.5, 1.0, m)])
            pts = np.concatenate([ends, ends])
            length = np.concatenate([length, length]) * rng.uniform(0.6, 0.85, 2 * m)
            width = np.concatenate([width, width]) * 0.72
    return gaussian_filter(np.asarray(img), 0.7)


def _body(u, v, a):
    """Soft-tissue thickness: neck, shoulders, chest wall and (sometimes) the arms beside the chest."""
    au = np.abs(u)
    top = np.clip(v / a["shoulder_v"], 0, 1)
    shoulders = a["neck"] + (a["chest"] + 0.04 - a["neck"]) * np.sqrt(top * top * (3 - 2 * top))
    chest_wall = _lateral_edge(v, a) + a["chest"] - 0.375
    below = np.maximum(v - a["shoulder_v"] - 0.1, 0)  # under the shoulders the outline narrows onto the chest wall
    width = np.minimum(shoulders, np.maximum(chest_wall, shoulders - 0.5 * below))
    thickness = np.sqrt(np.clip(1 - (u / (width + 0.03)) ** 2, 0, 1)) * _soft(width - au, 0.02)
    if a["arms"]:
        inner = a["chest"] + a["arm_gap"]
        arm = _soft(np.minimum(au - inner, inner + a["arm_width"] - au), 0.02) * _soft(v - a["shoulder_v"], 0.1)
        thickness = np.maximum(thickness, 0.8 * arm)
    return thickness


def _heart(u, v, a, grow=1.0):
    heart = _soft(np.minimum(_heart_border(v, a, 1, grow) - u, u + _heart_border(v, a, -1, grow)), 0.04)
    return heart * _soft(v - a["heart_top"], 0.1)


def _breasts(u, v, a, scale):
    """Breast or pectoral soft-tissue shadows over both lung bases: smooth domes with a curved lower edge."""
    out = np.zeros(u.shape, _F)
    for side in (-1, 1):
        ru, rv = 0.15 * scale, 0.11 * scale
        r2 = ((u - side * 0.25) * (1 / ru)) ** 2 + ((v - a["dome"] + 0.03) * (1 / rv)) ** 2
        out += np.sqrt(np.clip(1 - r2, 0, 1))
    return out


def _scapulae(u, v, a, scale):
    """The scapulae, not fully rotated out: smooth plates over the upper lateral lungs, leaning inwards below."""
    lat = np.abs(u)
    cv = a["apex"] + 0.2 * scale
    cu = _lateral_edge(v, a) - 0.03 * scale
    r2 = ((lat - cu) * (1 / (0.08 * scale))) ** 2 + ((v - cv) * (1 / (0.19 * scale))) ** 2
    return _soft(1 - r2, 0.8)


def _anatomy(rng, frame, shape):
    """Attenuation map of the patient without lesion, and the geometry lesions are placed in."""
    a = _draw_anatomy(rng)
    u, v = _coords(frame, shape)
    sides = {side: _lung_sd(u, v, a, side) for side in (-1, 1)}
    lung_sd = np.maximum(sides[-1], sides[1])
    lung = np.clip(lung_sd * (1 / 0.015), 0, 1)  # ramps up inside the lung: no air outside the mask
    # the beam crosses more lung in the middle of each field and lower down
    depth = np.sqrt(np.clip(lung_sd * (1 / 0.07), 0, 1)) * (0.55 + 0.45 * _soft(v - a["apex"] - 0.15, 0.3))
    soft_var = _noise_field(rng, 10, shape, 1.0)
    body = _body(u, v, a)
    att = (0.9 + 0.06 * soft_var) * a["soft"] * body
    air = 0.3 * lung + 0.7 * depth
    att -= 0.6 * a["air"] * air
    att += 0.03 * _heart(u, v, a)
    ribs = _ribs(u, v, a, lung_sd) * (0.5 + 0.5 * lung)
    att += 0.11 * a["bone"] * (ribs + 1.3 * _clavicles(u, v, a)) * body
    att += 0.12 * _spine(u, v, a)
    att -= 0.1 * _airways(u, v)
    hila = sum(np.exp(-(((u - side * (a["med"] + 0.06)) * (1 / 0.03)) ** 2)
                   - (((v - a["heart_top"] - 0.03) * (1 / 0.05)) ** 2)) for side in (-1, 1))
    att += (0.08 * a["vessels"] * _vessels(rng, frame, shape, a) + 0.05 * hila) * lung
    mottle = _noise_field(rng, 120, shape, 0.7)
    att += 0.012 * mottle * lung
    att += a["breasts"] * _breasts(u, v, a, a["breast_scale"]) + a["scapulae"] * _scapulae(u, v, a, a["scapula_scale"])
    if a["bubble"]:
        bub = ((u - 0.2) * (1 / 0.06)) ** 2 + ((v - a["dome"] - a["dome_lr"] - 0.07) * (1 / 0.035)) ** 2
        att -= 0.12 * _soft(1 - bub, 0.6) * (lung_sd < -0.02)
    return att, dict(a=a, u=u, v=v, lung_sd=lung_sd, sides=sides, air=air, lung=lung, body=body)


# ---------------------------------------------------------------- exposure

_GLYPHS = {
    "L": np.array([[c == "1" for c in row] for row in ["11000", "11000", "11000", "11000", "11000", "11111", "11111"]]),
    "R": np.array([[c == "1" for c in row] for row in ["11110", "11011", "11011", "11110", "11100", "11011", "11011"]]),
}


def _stamp(img, block, corner, inset):
    """Burn a bright block (marker, text) into one corner of the image, in place."""
    h, w = img.shape
    bh, bw = block.shape
    y = round(inset[0] * h) if corner < 2 else h - bh - round(inset[0] * h)
    x = round(inset[1] * w) if corner % 2 == 0 else w - bw - round(inset[1] * w)
    y, x = max(0, y), max(0, x)
    region = img[y:y + bh, x:x + bw]
    np.maximum(region, block[: region.shape[0], : region.shape[1]], out=region)


def _draw_marker(img, m):
    cell = max(1, round(m["scale"] * img.shape[1] / 7))
    _stamp(img, np.kron(m["glyph"].astype(_F), np.ones((cell, cell), _F)) * m["level"], m["corner"], m["inset"])


def _draw_annotation(img, t):
    if not t["glyphs"]:
        return
    cell = max(1, round(t["scale"] * img.shape[1]))
    width = max(len(line) for line in t["glyphs"]) * 4
    rows = []
    for line in t["glyphs"]:  # characters 3 cells wide with a 1-cell gap, lines 5 cells high with a 2-cell gap
        text = np.zeros((7, width), bool)
        for i, char in enumerate(line):
            text[:5, 4 * i:4 * i + 3] = char
        rows.append(text)
    block = np.kron(np.concatenate(rows).astype(_F), np.ones((cell, cell), _F)) * t["level"]
    _stamp(img, block, t["corner"], t["inset"])


def _tone(att, frame):
    """Film response: saturating exposure curve, gamma, gain/offset, vignetting, collimation (smooth: work grid)."""
    f, k = frame, frame["k"]
    bright = -np.expm1(-k * np.maximum(att, 0)) * (1 / -math.expm1(-k * 1.4))
    bright = np.clip(bright, 0, 1) ** f["gamma"] * f["gain"] + f["offset"]
    h, w = att.shape
    yy = (np.arange(h, dtype=_F) / h - 0.5 - f["vig_center"][0] * 0.3)[:, None]
    xx = (np.arange(w, dtype=_F) / w - 0.5 - f["vig_center"][1] * 0.3)[None, :]
    bright = bright * (1.0 - f["vignette"] * 2 * (xx * xx + yy * yy))
    return _collimate(bright, f["collimation"])


def _collimate(bright, c):
    if not c["widths"].any():
        return bright
    h, w = bright.shape
    y = (np.arange(h, dtype=_F) + 0.5) / h
    x = (np.arange(w, dtype=_F) + 0.5) / w
    top, bottom, left, right = c["widths"]
    inside = _soft(np.minimum(y - top, 1 - bottom - y), c["edge"])[:, None] * \
        _soft(np.minimum(x - left, 1 - right - x), c["edge"])[None, :]
    return bright * inside + c["level"] * (1 - inside)


def _finish(rng, bright, frame):
    """Full-size detector effects: quantum noise (growing with dose, of varying grain), text, marker, 8 bits."""
    h, w = bright.shape
    grain = frame["grain"]
    noise = _resize(rng.standard_normal((max(8, round(h / grain)), max(8, round(w / grain))), dtype=_F), (h, w))
    bright = bright + frame["noise"] * math.sqrt(grain) * noise * np.sqrt(np.clip(bright, 0.05, 1))
    _draw_annotation(bright, frame["text"])
    _draw_marker(bright, frame["marker"])
    return (np.clip(bright, 0, 1) * 255 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------- lesions

def _lung_height(v, a, side):
    """0 at the apex, 1 at the diaphragm dome of one lung."""
    dome = a["dome"] + (a["dome_lr"] if side > 0 else 0.0)
    return (v - a["apex"]) * (1 / (dome - a["apex"]))


def _blob(u, v, centre, radius, roughness):
    """An irregular, patchy focus: 1 - distance/radius perturbed by noise, so borders wander and holes open.
    `roughness` is a unit-variance noise field scaled by how irregular the focus is."""
    dist = np.hypot(u - centre[0], (v - centre[1]) * 0.85) * (1 / radius)
    return np.clip((1 - dist + roughness) * 2.5, 0, 1)


def _roughness(rng, shape):
    coarse = _noise_field(rng, 14, shape, 1.0)
    fine = _noise_field(rng, 40, shape, 1.0)
    return 0.35 * coarse + 0.3 * fine


def _one_lung(geo, side):
    return _soft(geo["sides"][side] + 0.01, 0.02)


def _lobar(rng, geo, scale):
    """Consolidation of part of one lobe: patchy, bounded by a wavy fissure, the lung edge and its own margin."""
    a, u, v = geo["a"], geo["u"], geo["v"]
    side = int(rng.choice([-1, 1]))
    lobe = int(rng.integers(3))  # upper, lower, middle (lingula on the left)
    height = a["dome"] - a["apex"]
    t = _lung_height(v, a, side)
    # fissures are curved and oblique (higher laterally for the major fissure), never ruler-straight
    wave = 0.05 * _noise_field(rng, 6, u.shape, 1.0) + 0.02 * _noise_field(rng, 16, u.shape, 1.0)
    across = (side * u - 0.2) * (1 / 0.2)
    fissure = rng.uniform(0.4, 0.55) - rng.uniform(0.05, 0.15) * across + rng.uniform(-0.1, 0.1) * across ** 2 + wave
    if lobe == 0:
        region, centre_t = _soft((fissure - t) * height, 0.02), rng.uniform(0.15, 0.4)
    elif lobe == 1:
        region, centre_t = _soft((t - fissure - 0.05) * height, 0.03), rng.uniform(0.65, 0.95)
    else:
        region = _soft((t - fissure) * height, 0.02) * _soft(0.26 + wave - side * u, 0.04)
        centre_t = rng.uniform(0.55, 0.85)
    centre = (side * rng.uniform(0.14, 0.28), a["apex"] + centre_t * height)
    radius = scale * rng.uniform(0.12, 0.22)
    return region * _blob(u, v, centre, radius, _roughness(rng, u.shape)) * _one_lung(geo, side)


def _inside_points(rng, geo, n):
    """n random points well inside the lungs, in patient units (2 x n)."""
    u, v, lung_sd = geo["u"], geo["v"], geo["lung_sd"]
    inside = np.flatnonzero(lung_sd > 0.03)
    if len(inside) == 0:  # a tiny render: fall back to the deepest lung pixel
        inside = np.array([lung_sd.argmax()])
    picks = inside[rng.integers(len(inside), size=n)]
    return np.stack([u.flat[picks], v.flat[picks]])


def _patchy(rng, geo, scale):
    """Bronchopneumonia: several irregular foci, from small to sizeable, clustered in one zone or in both lungs."""
    u, v = geo["u"], geo["v"]
    n = int(rng.integers(2, 9))
    if rng.uniform() < 0.5:
        centres = _inside_points(rng, geo, 1) + rng.normal(0, 0.06, (2, n))
    else:
        centres = _inside_points(rng, geo, n)
    radii = scale * np.exp(rng.uniform(math.log(0.035), math.log(0.1), n))
    roughness = _roughness(rng, u.shape)
    out = np.zeros(u.shape, _F)
    for centre, radius in zip(centres.T, radii):
        np.maximum(out, _blob(u, v, centre, radius, roughness) * rng.uniform(0.7, 1.0), out=out)
    return out


def _interstitial(rng, geo, scale):
    """Interstitial / peribronchial pattern: a fine net of streaks over a perihilar or basal zone, often both sides."""
    a, u, v = geo["a"], geo["u"], geo["v"]
    sides = [int(rng.choice([-1, 1]))] if rng.uniform() < 0.3 else [-1, 1]
    zone_t = rng.uniform(0.35, 0.85)
    ru, rv = scale * rng.uniform(0.09, 0.15), scale * rng.uniform(0.13, 0.22)
    roughness = _roughness(rng, u.shape)
    area = np.zeros(u.shape, _F)
    for side in sides:
        centre = (side * rng.uniform(0.13, 0.25), a["apex"] + zone_t * (a["dome"] - a["apex"]))
        dist = np.hypot((u - centre[0]) * (1 / ru), (v - centre[1]) * (1 / rv))
        np.maximum(area, np.clip((1 - dist + roughness) * 4, 0, 1), out=area)
    fine = _noise_field(rng, 90, u.shape, 0.8)
    coarse = _noise_field(rng, 45, u.shape, 0.8)
    lines = np.maximum(np.exp(-(fine * (1 / 0.2)) ** 2), 0.7 * np.exp(-(coarse * (1 / 0.15)) ** 2))
    return area * (0.4 + 0.6 * lines)


_PATTERN_SHAPES = {"lobar": _lobar, "patchy": _patchy, "interstitial": _interstitial}


def _lesion(rng, geo, difficulty):
    """Lesion density (attenuation units, work grid, exactly 0 outside the lesion) and its pattern.

    Drawn from the lesion RNG only, with the same draws at every difficulty: difficulty scales the
    density and the size of one and the same lesion. Exudate replaces air, so the density is
    proportional to the air the beam crosses there (no bright rims at the lung edges).
    """
    d = min(max(difficulty, 0.0), 1.0)
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    density = rng.uniform(0.8, 1.2) * _lerp(5.0, 0.5, d)
    opacity = _PATTERN_SHAPES[pattern](rng, geo, _lerp(1.1, 0.5, d))
    # alveolar filling is not uniform: blotchy clumps, acinar nodules, air bronchograms where it is dense
    clumps = np.clip(0.5 + 0.7 * _noise_field(rng, 20, opacity.shape, 1.0), 0, 1)
    nodules = np.clip(0.5 + 1.5 * _noise_field(rng, 28, opacity.shape, 0.8), 0, 1)
    bronchi = np.exp(-((_noise_field(rng, 24, opacity.shape, 1.0) * (1 / 0.2)) ** 2))
    texture = (0.15 + 0.85 * clumps) * (0.2 + 0.8 * nodules) * (1 - 0.6 * bronchi * opacity)
    return (density * opacity * geo["air"] * texture).astype(_F), pattern


# ---------------------------------------------------------------- the NORMAL counterpart: matched opacity

def _shadow(kind, geo, scale):
    """One kind of NORMAL opacity as a unit field: soft tissue and bone over (not in) the lungs, or a larger heart."""
    a, u, v = geo["a"], geo["u"], geo["v"]
    if kind == "heart":  # a larger heart (or a poor inspiration): density where lung was, without its texture
        # it ends at the diaphragm: unbounded, the difference of two hearts is a band down to the image's edge
        return (_heart(u, v, a, 1 + 0.6 * scale) - _heart(u, v, a)) * _soft(a["dome"] + 0.04 - v, 0.06)
    if kind == "breasts":
        return _breasts(u, v + 0.04 * scale, a, scale * 1.2)
    if kind == "scapulae":
        return _scapulae(u, v, a, scale)
    # a thicker chest wall and shoulders; overlying tissue (breasts, scapulae) stays smooth over the lungs, as
    # on a film: cut at the lung's edge it would draw the lung outline, a cue no real NORMAL film has
    return geo["body"] * _soft(np.abs(u) - a["lung_lat"] + 0.12 * scale, 0.08) * (1 - geo["lung"])


def _matched_shadow(rng, geo, att, frame, lesion):
    """Non-lesion opacity that brightens the image exactly as much as `lesion` would, over a similar area.

    Shadows are taken in random order until their density, each capped at what that anatomy can plausibly
    add, sums to the lesion's; then the whole is rescaled to the lesion's added brightness (the film curve
    is not linear). Returns the density and the kinds used ("+"-joined)."""
    lesion_area = np.count_nonzero(lesion > 0.05 * lesion.max())
    needed, total, kinds = float(lesion.sum()), np.zeros_like(att), []
    for kind in rng.permutation(list(SHADOWS)):
        unit_area = np.count_nonzero(_shadow(kind, geo, 1.0) > 0.05)
        field = _shadow(kind, geo, float(np.clip(math.sqrt(lesion_area / max(unit_area, 1)), 0.5, 1.8)))
        amount = min(needed / max(float(field.sum()), 1e-6), SHADOWS[kind] / max(float(field.max()), 1e-6))
        total += amount * field
        kinds.append(str(kind))
        needed -= amount * float(field.sum())
        if needed <= 0.02 * lesion.sum():
            break
    coarse = (slice(None, None, 2), slice(None, None, 2))  # a brightness sum: half the resolution is plenty
    base = _tone(att[coarse], frame)
    target = float((_tone((att + lesion)[coarse], frame) - base).sum())
    for _ in range(2):
        got = float((_tone((att + total)[coarse], frame) - base).sum())
        total *= target / got if got > 0 else 1.0
    return total.astype(_F), "+".join(kinds)


# ---------------------------------------------------------------- public API

def render_case(seed: int, index: int, pneumonia: bool, *, size: int = DEFAULT_SIZE,
                difficulty: float = DEFAULT_DIFFICULTY, opacity: bool = True, return_info: bool = False):
    """One radiograph (uint8 H×W) and its mask (uint8 H×W: 0 outside the lungs, 128 lung field, 255 lesion).

    Everything but the class's opacity comes from the case RNG alone, so both renders of one (seed, index)
    share anatomy and nuisance. PNEUMONIA adds a lesion; NORMAL adds a non-lesion opacity (see SHADOWS) that
    brightens the image by as much. `opacity=False` renders the case without either (the bare patient);
    the PNEUMONIA mask marks the pixels where the lesion changes the bare film by at least one grey level
    (before detector noise). With return_info=True a third element is returned: a dict with "pattern" (one of
    PATTERNS, None for NORMAL), "shadow" (the SHADOWS used, "+"-joined; None for PNEUMONIA) and "added" (mean
    brightness added over the image, 0..1).
    """
    rng = np.random.default_rng([seed, index, 0])
    frame = _draw_frame(rng, size)
    shape = (frame["h"], frame["w"])
    att, geo = _anatomy(rng, frame, _work_shape(*shape))
    lung_sd = _resize(geo["lung_sd"], shape)
    mask = np.where(lung_sd > 0, MASK_LUNG, 0).astype(np.uint8)
    info = {"pattern": None, "shadow": None, "added": 0.0}
    bright = bare = _tone(att, frame)
    if opacity:
        lesion, pattern = _lesion(np.random.default_rng([seed, index, 1]), geo, float(difficulty))
        if pneumonia:
            bright, info["pattern"] = _tone(att + lesion, frame), pattern
            # the lesion is what changes the film by at least one grey level (faint fringes are not lesion)
            mask[_changed_pixels(bright - bare >= 1 / 255, shape)] = MASK_LESION
        else:
            shadow, info["shadow"] = _matched_shadow(np.random.default_rng([seed, index, 2]), geo, att, frame, lesion)
            bright = _tone(att + shadow, frame)
        info["added"] = float((bright - bare).mean())
    img = _finish(rng, _resize(bright, shape, Image.BICUBIC), frame)
    if return_info:
        return img, mask, info
    return img, mask


def _changed_pixels(support, shape):
    """Output pixels that a change on `support` (work grid) reaches through bicubic upsampling."""
    support = support.astype(np.uint8)
    if support.shape != tuple(shape):
        support = maximum_filter(support, size=2 * BICUBIC_REACH + 1)
    return _resize(support, shape, Image.NEAREST).astype(bool)


def _plan(n_train, n_val, n_test, seed, ext):
    """One row per case: split, label, index and the relative paths of image and mask."""
    rows, index = [], 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for i in range(n):
            label = CLASSES[0] if i < n // 2 else CLASSES[1]
            patient = f"synth{seed}-{index:05d}"
            name = f"{patient}_{label.lower()}"
            rows.append({"path": f"{split}/{label}/{name}.{ext}", "label": label, "patient_id": patient,
                         "split": split, "mask": f"masks/{split}/{label}/{name}.png", "index": index})
            index += 1
    return rows


def _write_case(job):
    root, row, seed, size, difficulty = job
    img, mask = render_case(seed, row["index"], row["label"] == CLASSES[1], size=size, difficulty=difficulty)
    if row["path"].endswith(".png"):
        Image.fromarray(img).save(root / row["path"], compress_level=1)
    else:
        Image.fromarray(img).save(root / row["path"], quality=90)
    Image.fromarray(mask).save(root / row["mask"], compress_level=6)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_dataset(out, *, n_train=STUDY_SPLIT["n_train"], n_val=STUDY_SPLIT["n_val"], n_test=STUDY_SPLIT["n_test"],
                  seed=0, size=DEFAULT_SIZE, difficulty=DEFAULT_DIFFICULTY, image_format="png", workers=1,
                  progress=True) -> pd.DataFrame:
    """Write a Kermany-layout data set with lesion masks and manifest.csv; return the manifest.

    Layout: out/{train,val,test}/{NORMAL,PNEUMONIA}/<name>.<png|jpeg>, masks as PNG under
    out/masks/{split}/{label}/, out/manifest.csv (path, label, patient_id, split, mask; paths relative
    to out). Each split holds n//2 NORMAL cases, the rest PNEUMONIA; every case is its own patient.
    The set is built in a temporary folder next to `out` and renamed into place when complete, so
    `out` either holds a whole data set or does not exist. An existing empty `out` is replaced.
    """
    ext = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg"}.get(str(image_format).lower())
    if ext is None:
        raise ValueError(f"image_format must be 'png' or 'jpeg', not {image_format!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: already exists and is not an empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = _plan(n_train, n_val, n_test, seed, ext)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); the data set is a folder like any other
    try:
        for row in rows:
            for key in ("path", "mask"):
                (tmp / row[key]).parent.mkdir(parents=True, exist_ok=True)
        jobs = [(tmp, row, seed, size, difficulty) for row in rows]
        bar = tqdm(total=len(jobs), desc=f"synthetic {out.name}", unit="img", disable=not progress)
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(_write_case, jobs, chunksize=8):
                    bar.update()
        else:
            for job in jobs:
                _write_case(job)
                bar.update()
        bar.close()
        manifest = pd.DataFrame(rows).drop(columns="index")
        manifest.to_csv(tmp / "manifest.csv", index=False)
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
