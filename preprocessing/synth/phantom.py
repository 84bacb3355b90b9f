"""Deterministic phantom chest radiographs whose anatomy and lesion boxes are true by construction.

Why a phantom: the synthetic raw sources need pixels a small detector can actually learn from, so every box is
derived from the very geometry that is drawn. Geometry lives in normalized coordinates of the central
min(W, H) square (the ingest pipeline centre-crops to it), is rasterized with numpy at <= 512 px on the long side,
upscaled with PIL and given cheap full-resolution grain.

RNG contract: each render takes exactly one ``rng.integers(..., size=4)`` draw, whatever the size or lesions; the
four seeds drive independent streams (geometry, texture, grain, lesions), so one patient seed rendered with and
without a lesion gives identical anatomy and noise. Only cardiomegaly changes the anatomy (the heart boxes).
Lesion boxes come from the rasterized effect, so they are tight to within one working pixel (max(W, H) / 512).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from preprocessing.classes import CIG_BBOX_NAMES_36

LESION_KINDS: tuple[str, ...] = ("pleural_effusion", "cardiomegaly", "consolidation", "atelectasis", "nodule",
                                 "mass", "pneumothorax", "edema", "opacity")
_ZONES = ("upper", "mid", "lower")
_SIGN = {"right": -1.0, "left": 1.0}  # patient right is image left (smaller x)
_WORK = 512                           # long side of the working raster
_LUNG_AIR = 0.32                      # attenuation removed by aerated lung
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Lesion:
    kind: str                 # one of LESION_KINDS
    side: str | None          # "right" | "left" (PATIENT side) | None (cardiomegaly; edema = bilateral)
    zone: str | None = None   # "upper" | "mid" | "lower" | None (zonal kinds; default mid, atelectasis lower)
    severity: float = 1.0     # 0.5..1.0 scales size/density


@dataclass
class Phantom:
    image: np.ndarray                      # float32 (H, W) in [0, 1]; 1 = most attenuating (MONOCHROME2)
    anatomy: dict[str, Box]                # all 36 CIG names -> (x1, y1, x2, y2) pixels
    lesion_boxes: list[Box]                # 1:1 with the lesions argument: tight box of what was drawn


@dataclass(frozen=True)
class _Geo:
    """One patient's thorax in square-normalized units (u right, v down); d = lateral distance from midline."""

    cx: float; L: float; med: float; wall: float; shoulder: float; apex: float
    cp: dict[str, float]; dome: dict[str, float]; card: dict[str, float]; hil_v: dict[str, float]
    hil_d: float; carina: float; knob_v: float; clav_v: float; tx: float; tw: float; spine_w: float
    ctr: float; heart_top: float; rib0: float; rib_sp: float; rib_curv: float; gain: float; bias: float; gamma: float

    @property
    def heart(self) -> tuple[float, float, float, float]:
        """Heart ellipse (centre u, centre v, rx, ry); 64% of its width lies on the patient's left."""
        hw = self.ctr * 2 * self.L
        bottom = 0.5 * (self.card["right"] + self.card["left"]) + 0.07
        return self.cx + 0.14 * hw, 0.5 * (self.heart_top + bottom), 0.5 * hw, 0.5 * (bottom - self.heart_top)


class _Grid:
    """Working-resolution pixel centres in square-normalized coordinates, and the maps back to full pixels."""

    def __init__(self, width: int, height: int) -> None:
        self.W, self.H, self.S = width, height, min(width, height)
        f = min(1.0, _WORK / max(width, height))
        self.w, self.h = max(8, round(width * f)), max(8, round(height * f))
        self.ox, self.oy = (width - self.S) / 2, (height - self.S) / 2
        self.u = (((np.arange(self.w) + 0.5) * width / self.w - self.ox) / self.S).astype(np.float32)[None, :]
        self.v = (((np.arange(self.h) + 0.5) * height / self.h - self.oy) / self.S).astype(np.float32)[:, None]
        self.eps = 1.5 * width / self.w / self.S  # soft-edge width: 1.5 working pixels

    def soft(self, margin: np.ndarray) -> np.ndarray:
        """Anti-aliased inside-mask from a signed distance (>0 inside), ramping over `eps`."""
        return np.clip(0.5 + margin / self.eps, 0.0, 1.0)

    def to_px(self, b: Box) -> Box:
        """Normalized box -> pixel box clipped to the image, always with positive area."""
        x1 = min(max(self.ox + b[0] * self.S, 0.0), self.W - 1.0)
        y1 = min(max(self.oy + b[1] * self.S, 0.0), self.H - 1.0)
        x2 = min(max(self.ox + b[2] * self.S, x1 + 1.0), float(self.W))
        y2 = min(max(self.oy + b[3] * self.S, y1 + 1.0), float(self.H))
        return x1, y1, x2, y2

    def window(self, b: Box) -> tuple[slice, slice]:
        """Working-pixel rows/cols covering a normalized box plus a small margin (work is done only there)."""
        fx, fy = self.w / self.W, self.h / self.H
        c0 = min(max(0, int((self.ox + b[0] * self.S) * fx) - 3), self.w - 1)
        r0 = min(max(0, int((self.oy + b[1] * self.S) * fy) - 3), self.h - 1)
        c1 = max(min(self.w, int((self.ox + b[2] * self.S) * fx) + 4), c0 + 1)
        r1 = max(min(self.h, int((self.oy + b[3] * self.S) * fy) + 4), r0 + 1)
        return slice(r0, r1), slice(c0, c1)

    def mask_box(self, mask: np.ndarray, win: tuple[slice, slice]) -> Box:
        """Tight pixel box of a boolean mask over `win` (to within one working pixel; the window if empty)."""
        cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
        if cols.size == 0:
            cols, rows = np.array([0, mask.shape[1] - 1]), np.array([0, mask.shape[0] - 1])
        c0, r0 = win[1].start + cols[0], win[0].start + rows[0]
        c1, r1 = win[1].start + cols[-1] + 1, win[0].start + rows[-1] + 1
        sx, sy = self.W / self.w, self.H / self.h
        return float(c0 * sx), float(r0 * sy), float(c1 * sx), float(r1 * sy)


def _sample_geometry(r: np.random.Generator) -> _Geo:
    """Per-patient jitter of a few percent; a fixed number of draws so later streams never shift."""
    apex, L, med = r.uniform(0.09, 0.13), r.uniform(0.33, 0.38), r.uniform(0.04, 0.055)
    cp_r = apex + r.uniform(0.57, 0.63)
    dome_r = cp_r - r.uniform(0.085, 0.11)
    dome_l = dome_r + r.uniform(0.01, 0.03)                     # right hemidiaphragm sits higher
    cp_l = max(cp_r + r.uniform(0.005, 0.02), dome_l + 0.075)
    card_r, card_l = dome_r + r.uniform(0.35, 0.5) * (cp_r - dome_r), dome_l + r.uniform(0.4, 0.55) * (cp_l - dome_l)
    hil_r = apex + r.uniform(0.42, 0.48) * (cp_r - apex)
    hil_l = hil_r - r.uniform(0.01, 0.03)                        # left hilum higher
    carina = hil_l - r.uniform(0.04, 0.06)
    cx = 0.5 + r.normal(0.0, 0.01)
    return _Geo(cx=cx, L=L, med=med, wall=r.uniform(0.05, 0.08), shoulder=r.uniform(0.02, 0.06), apex=apex,
                cp={"right": cp_r, "left": cp_l}, dome={"right": dome_r, "left": dome_l},
                card={"right": card_r, "left": card_l}, hil_v={"right": hil_r, "left": hil_l},
                hil_d=med + r.uniform(0.045, 0.065), carina=carina, knob_v=carina - r.uniform(0.05, 0.07),
                clav_v=apex + r.uniform(0.02, 0.05), tx=cx - r.uniform(0.0, 0.008), tw=r.uniform(0.011, 0.015),
                spine_w=r.uniform(0.03, 0.038), ctr=r.uniform(0.39, 0.47), heart_top=hil_r + r.uniform(-0.01, 0.03),
                rib0=apex - r.uniform(0.01, 0.03), rib_sp=r.uniform(0.05, 0.058), rib_curv=r.uniform(0.8, 1.1),
                gain=r.uniform(1.05, 1.3), bias=r.uniform(-0.05, 0.0), gamma=r.uniform(0.85, 1.2))


def _dia(g: _Geo, side: str, d: np.ndarray) -> np.ndarray:
    """Hemidiaphragm dome height at lateral distance d: low at the cardiophrenic and costophrenic ends."""
    peak = g.med + 0.45 * (g.L - g.med)
    s = np.where(d > peak, (d - peak) / (g.L - peak), (peak - d) / (peak - g.med))
    end = np.where(d > peak, np.float32(g.cp[side]), np.float32(g.card[side]))
    return g.dome[side] + (end - g.dome[side]) * np.clip(s, 0.0, 1.3) ** 2


def _lung_margin(g: _Geo, side: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance into one lung (>0 inside); its box is exactly [med, L] x [apex, cp]."""
    d = _SIGN[side] * (u - g.cx)
    t = np.clip((v - g.apex) / (g.cp[side] - g.apex), 0.0, 1.0)
    lat = g.L * (1 - 0.4 * (1 - t) ** 3)
    cap = g.apex + 9.0 * (d - (g.med + 0.4 * (g.L - g.med))) ** 2   # rounded apex
    return np.minimum(np.minimum(d - g.med, lat - d), np.minimum(v - cap, _dia(g, side, d) - v))


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, rx: float, ry: float) -> np.ndarray:
    """Approximate signed distance into an axis-aligned ellipse."""
    return (1 - np.sqrt(((u - cu) / rx) ** 2 + ((v - cv) / ry) ** 2)) * min(rx, ry)


def _clavicle(g: _Geo, side: str, d: np.ndarray) -> np.ndarray:
    """Clavicle centre line v(d): rises laterally with a slight S."""
    s = np.clip((d - 0.025) / (g.L - 0.02), 0.0, 1.0)
    return g.clav_v + 0.04 - 0.09 * s + 0.012 * np.sin(2 * np.pi * s)


def _bump(t: np.ndarray) -> np.ndarray:
    """Parabolic profile on t in [0, 1], zero elsewhere (a cheap rib cross-section)."""
    return np.maximum(4 * t * (1 - t), 0)


def _smooth_noise(r: np.random.Generator, shape: tuple[int, int], grid: _Grid) -> np.ndarray:
    """Unit-variance-ish smooth random field: a small normal grid upscaled bilinearly."""
    small = Image.fromarray(r.standard_normal(shape).astype(np.float32))
    return np.asarray(small.resize((grid.w, grid.h), Image.BILINEAR))


def _vessel_tree(g: _Geo, grid: _Grid, r: np.random.Generator) -> np.ndarray:
    """Tapering branching pulmonary vessels of both hila, drawn as PIL lines (cheap) and slightly blurred."""
    img = Image.new("L", (grid.w, grid.h), 0)
    draw = ImageDraw.Draw(img)
    fx, fy = grid.w / grid.W, grid.h / grid.H
    for side, sg in _SIGN.items():
        n = 6
        ang = np.linspace(-1.6, 1.2, n) + r.uniform(-0.15, 0.15, n)     # 0 = lateral, negative = upward
        pts = np.array([g.cx + sg * g.hil_d, g.hil_v[side]]) + r.uniform(-0.025, 0.025, (n, 2))
        length, width = r.uniform(0.05, 0.08, n) * (1 + 0.4 * (ang < -0.8)), 0.012
        for depth in range(5):
            end = pts + length[:, None] * np.stack([sg * np.cos(ang), np.sin(ang)], axis=1)
            xy = np.stack([pts, end], axis=1) * grid.S + [grid.ox, grid.oy]
            wpx = max(1, round(width * grid.S * fx))
            for (x0, y0), (x1, y1) in (xy * [fx, fy]).tolist():
                draw.line((x0, y0, x1, y1), fill=255 - 40 * depth, width=wpx)
            k = len(pts)
            pts, width = np.repeat(end, 2, axis=0), width * 0.7
            ang = np.repeat(ang, 2) + np.tile([-1.0, 1.0], k) * r.uniform(0.15, 0.5, 2 * k)
            length = np.repeat(length, 2) * r.uniform(0.6, 0.85, 2 * k)
    return np.asarray(img.filter(ImageFilter.BoxBlur(1)), dtype=np.float32) / 255.0


def _anatomy(g: _Geo, grid: _Grid, tex: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Attenuation map of the healthy thorax, the soft lung masks and the vessel field (which pneumothorax erases).

    Lung, rib and clavicle terms are evaluated only in each hemithorax window: this keeps a render fast."""
    u, v, soft = grid.u, grid.v, grid.soft
    lowf, midf = _smooth_noise(tex, (10, 9), grid), _smooth_noise(tex, (60, 52), grid)
    du = np.abs(u - g.cx)
    chest = g.L + g.wall + g.shoulder * np.exp(-(((v - g.apex) / 0.08) ** 2))
    bw = 0.09 + (chest - 0.09) * (0.5 + 0.5 * np.tanh((v - g.apex + 0.06) / 0.04))  # neck -> shoulders -> chest
    body = soft(bw - du)
    a = 0.5 * body * (0.35 + 0.65 * np.sqrt(np.clip(1 - (du / bw) ** 2, 0, 1))) + 0.02
    t = np.clip((u - g.cx + g.med) / (2 * g.med), 0, 1)                     # blend the domes across the midline
    dia = (1 - t) * _dia(g, "right", np.maximum(g.cx - u, g.med)) + t * _dia(g, "left", np.maximum(u - g.cx, g.med))
    below = soft(v - dia)
    a += (0.06 * below + 0.012 * midf) * body                                 # abdomen below the domes, mottle
    for amp, (cu, cv, rx, ry) in ((-0.12, (g.cx + 0.17, g.dome["left"] + 0.06, 0.045, 0.025)),  # gastric bubble
                                  (0.07, (g.cx + g.med + 0.005, g.knob_v, 0.028, 0.024))):      # aortic knob
        win = grid.window((cu - rx, cv - ry, cu + rx, cv + ry))
        a[win] += amp * soft(_ellipse(u[:, win[1]], v[win[0], :], cu, cv, rx, ry))
    win = grid.window((g.cx - g.spine_w, -1.0, g.cx + g.spine_w, 2.0))
    vert = 0.8 + 0.2 * np.cos(np.pi * (v - g.apex) / 0.045) ** 6                  # vertebral end plates
    a[win] += 0.09 * soft(g.spine_w - du[:, win[1]]) * vert[win[0]] * body[win]
    win = grid.window((g.tx - g.tw, -1.0, g.tx + g.tw, g.carina))
    a[win] -= 0.1 * soft(g.tw - np.abs(u[:, win[1]] - g.tx)) * soft(g.carina - v[win[0], :]) * body[win]  # trachea
    win = grid.window((g.cx + g.med - 0.012, g.knob_v, g.cx + g.med + 0.012, g.dome["left"]))       # desc. aorta
    vw = v[win[0], :]
    a[win] += 0.03 * soft(0.012 - np.abs(u[:, win[1]] - g.cx - g.med)) * soft(vw - g.knob_v) * soft(g.dome["left"] - vw)
    hcu, hcv, rx, ry = g.heart
    lungs = {side: np.zeros((grid.h, grid.w), np.float32) for side in _SIGN}
    vessels = 0.08 * _vessel_tree(g, grid, tex)
    for side, sg in _SIGN.items():
        win = grid.window(_span(g.cx, g.cx + sg * (g.L + 0.04), g.apex - 0.12, g.cp[side] + 0.06))
        uw, vw, aw = u[:, win[1]], v[win[0], :], a[win]
        d = sg * (uw - g.cx)
        lung = soft(_lung_margin(g, side, uw, vw))
        lungs[side][win] = lung
        heart = soft(_ellipse(uw, vw, hcu, hcv, rx, ry)) * (1 - below[win])
        air = (0.75 + 0.25 * np.clip(d / g.L, 0, 1)) * (1 - 0.3 * np.clip((vw - g.dome[side] + 0.08) / 0.12, 0, 1))
        aw -= _LUNG_AIR * lung * (1 - 0.85 * heart) * air * (1 + 0.1 * lowf[win])
        hu, hv = g.cx + sg * g.hil_d, g.hil_v[side]
        aw += 0.09 * np.exp(-(((uw - hu) / 0.03) ** 2 + ((vw - hv) / 0.04) ** 2) / 2)   # hilum
        bronchus = _seg_dist(uw, vw, (g.tx, g.carina), (hu - sg * 0.02, hv - 0.02))
        aw += 0.05 * soft(0.009 - bronchus) - 0.08 * soft(0.005 - bronchus)
        aw += 0.13 * soft(0.012 - np.abs(vw - _clavicle(g, side, d))) * soft(d - 0.025) * soft(g.L + 0.02 - d)
        ribs = soft(d - 0.03) * soft(g.L + 0.015 - d) * soft(vw - g.rib0 + 0.02) * soft(g.cp[side] + 0.03 - vw)
        ph = (vw - g.rib0 - g.rib_curv * (d - 0.03) ** 2) / (g.rib_sp * (1 + 0.4 * vw))  # posterior ribs
        post = _bump((ph - np.floor(ph)) / 0.4) * (ph > 0) * (ph < 10.5)
        pa = (vw - g.rib0 - 0.05 + 0.45 * d) / (g.rib_sp * 1.1)            # fainter anterior ribs, down medially
        aw += ribs * (0.06 * post + 0.025 * _bump((pa - np.floor(pa)) / 0.3) * (d > 0.12))
    vessels *= lungs["right"] + lungs["left"]
    return a, lungs, vessels


def _seg_dist(u: np.ndarray, v: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Distance from each point to the segment p0-p1."""
    ex, ey = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * ex + (v - p0[1]) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    return np.sqrt((u - p0[0] - t * ex) ** 2 + (v - p0[1] - t * ey) ** 2)


def _place(g: _Geo, side: str, zone: str, radius: float, r: np.random.Generator) -> tuple[float, float]:
    """A lesion centre inside the zone of the lung, at least `radius` from its border when possible."""
    h = (g.cp[side] - g.apex) / 3
    top = g.apex + _ZONES.index(zone) * h
    best, best_m = (g.cx + _SIGN[side] * 0.5 * (g.med + g.L), top + 0.5 * h), -np.inf
    for _ in range(24):
        pu = g.cx + _SIGN[side] * (g.med + r.uniform(0.2, 0.85) * (g.L - g.med))
        pv = top + r.uniform(0.15, 0.85) * h
        m = float(_lung_margin(g, side, np.float32(pu), np.float32(pv)))
        if m >= radius:
            return pu, pv
        best, best_m = ((pu, pv), m) if m > best_m else (best, best_m)
    return best


_BLOB_SIZE = {"nodule": (0.005, 0.009), "mass": (0.02, 0.02), "atelectasis": (0.07, 0.05),
              "consolidation": (0.05, 0.04), "opacity": (0.07, 0.05)}   # radius (half length) = a + b * severity


def _lesion(les: Lesion, g: _Geo, grid: _Grid, lungs: dict[str, np.ndarray], vessels: np.ndarray,
            patch: np.ndarray, r: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice]]:
    """(attenuation delta, mask whose box is the lesion box, working window of both) for a non-cardiomegaly lesion.

    Every effect is multiplied by the soft lung mask, so lesions never leave the lung they belong to; focal lesions
    are computed only in a window around them."""
    sides = [les.side] if les.side else list(_SIGN)
    side, sev = sides[0], les.severity
    sg = _SIGN[side]
    if les.kind in _BLOB_SIZE:
        a_, b_ = _BLOB_SIZE[les.kind]
        size = (a_ + b_ * sev) * r.uniform(0.9, 1.1)
        margin = {"nodule": size, "mass": size, "atelectasis": 0.02}.get(les.kind, 0.6 * size)
        zone = les.zone or ("lower" if les.kind == "atelectasis" else "mid")
        pu, pv = _place(g, side, zone, margin, r)
        win = grid.window((pu - 1.6 * size, pv - 1.6 * size, pu + 1.6 * size, pv + 1.6 * size))
    else:
        win = grid.window(_span(g.cx - (les.side != "left") * g.L, g.cx + (les.side != "right") * g.L,
                                g.apex, max(g.cp[s_] for s_ in sides)))
    u, v, soft = grid.u[:, win[1]], grid.v[win[0], :], grid.soft
    lung, patch = lungs[side][win], patch[win]
    if les.kind == "pleural_effusion":
        s = np.clip(sg * (u - g.cx) - g.med, 0, None) / (g.L - g.med)
        meniscus = g.cp[side] - (g.cp[side] - g.apex) * (0.12 + 0.28 * sev) * (0.45 + 0.55 * np.clip(s, 0, 1) ** 2)
        f = lung * np.clip((v - meniscus) / 0.03, 0, 1)
        return 0.9 * _LUNG_AIR * f, f > 0.3, win
    if les.kind == "pneumothorax":
        kx, ky = 1 - (0.1 + 0.15 * sev), 1 - (0.08 + 0.14 * sev)               # lung collapses toward its base
        cu, cv = g.cx + sg * (g.med + 0.1 * (g.L - g.med)), g.dome[side]
        inner = min(kx, ky) * _lung_margin(g, side, cu + (u - cu) / kx, cv + (v - cv) / ky)
        apical = np.clip((g.hil_v[side] + 0.1 + 0.15 * sev - v) / 0.1, 0, 1)   # air collects apico-laterally
        lucent = lung * (1 - soft(inner)) * apical
        line = lung * apical * np.clip(1 - np.abs(inner) / 0.004, 0, 1)        # visceral pleural line
        return -lucent * (0.12 + vessels[win]) + 0.12 * line, lucent > 0.5, win
    if les.kind == "edema":
        f = np.zeros_like(lung)
        for s_ in sides:
            hu, hv = g.cx + _SIGN[s_] * g.hil_d, g.hil_v[s_]
            f += lungs[s_][win] * np.exp(-((u - hu) ** 2 / (2 * 0.1 ** 2) + (v - hv) ** 2 / (2 * 0.13 ** 2)))
        f *= 0.8 + 0.2 * patch
        return (0.13 + 0.1 * sev) * f, f > 0.3, win
    if les.kind == "atelectasis":                                               # plate-like, nearly horizontal
        ang = r.uniform(-0.25, 0.25)
        c, s = math.cos(ang), math.sin(ang)
        along, across = (u - pu) * c + (v - pv) * s, (v - pv) * c - (u - pu) * s
        f = lung * soft(_ellipse(along, across, 0.0, 0.0, size, 0.008 + 0.008 * sev))
        return 0.26 * f, f > 0.3, win
    th = np.arctan2(v - pv, u - pu)
    ph = r.uniform(0, 2 * np.pi, 3).tolist()
    if les.kind in ("nodule", "mass"):                                          # well defined; masses lobulated
        lobes = 1 + (les.kind == "mass") * 0.08 * np.cos(5 * th + ph[0])
        rho = np.sqrt((u - pu) ** 2 + (v - pv) ** 2) / (size * lobes)
        f = lung * np.sqrt(np.clip(1 - rho ** 2, 0, 1)) ** 0.5
        return 0.32 * f, f > 0.2, win
    edge = size * (1 + 0.12 * np.cos(3 * th + ph[0]) + 0.08 * np.cos(5 * th + ph[1]))
    rho = np.sqrt((u - pu) ** 2 / r.uniform(0.7, 1.0) + (v - pv) ** 2) / edge
    if les.kind == "consolidation":
        f = lung * np.clip((1 - rho) * 5, 0, 1)
        hth = np.arctan2(v - g.hil_v[side], u - g.cx - sg * g.hil_d)         # air bronchograms point to the hilum
        bronch = (np.abs(np.sin(14 * hth + ph[2])) < 0.1) * np.clip((1 - rho) * 3 - 0.6, 0, 1)
        return (0.22 + 0.1 * sev) * f - 0.08 * bronch * f, f > 0.3, win
    f = lung * np.clip(1 - rho ** 2, 0, 1) * np.clip(0.55 + 0.35 * patch, 0, 1)        # patchy opacity
    return (0.14 + 0.08 * sev) * f, f > 0.2 * float(f.max()), win


def _span(xa: float, xb: float, y1: float, y2: float) -> Box:
    """Box from two x ends given in either order (sides mirror each other)."""
    return float(min(xa, xb)), float(y1), float(max(xa, xb)), float(y2)


def _anatomy_boxes(g: _Geo) -> dict[str, Box]:
    """All 36 CIG regions in normalized units, from the same parameters the renderer draws."""
    b: dict[str, Box] = {}
    hcu, hcv, rx, ry = g.heart
    hx1, hy1, hx2, hy2 = hcu - rx, hcv - ry, hcu + rx, min(hcv + ry, max(g.card.values()) + 0.01)  # visible part
    for side, sg in _SIGN.items():
        lo, hi = sorted((g.cx + sg * g.med, g.cx + sg * g.L))
        top, bot = g.apex, g.cp[side]
        h3 = (bot - top) / 3
        lat = g.cx + sg * g.L
        b[f"{side} lung"] = (lo, top, hi, bot)
        for i, z in enumerate(_ZONES):
            b[f"{side} {z} lung zone"] = (lo, top + i * h3, hi, top + (i + 1) * h3)
        b[f"{side} apical zone"] = (lo, top, hi, top + 0.2 * (bot - top))
        hu = g.cx + sg * g.hil_d
        b[f"{side} hilar structures"] = (hu - 0.05, g.hil_v[side] - 0.05, hu + 0.05, g.hil_v[side] + 0.05)
        b[f"{side} costophrenic angle"] = _span(lat, lat - sg * 0.08, bot - 0.07, bot + 0.01)
        b[f"{side} hemidiaphragm"] = (lo, g.dome[side] - 0.01, hi, bot + 0.01)
        edge = hcu + sg * rx * np.sqrt(max(0.0, 1 - ((g.card[side] - hcv) / ry) ** 2))
        b[f"{side} cardiophrenic angle"] = (edge - 0.03, g.card[side] - 0.04, edge + 0.03, g.card[side] + 0.015)
        ds = np.linspace(0.025, g.L + 0.02, 32)
        cv = _clavicle(g, side, ds)
        b[f"{side} clavicle"] = _span(g.cx + sg * 0.025, g.cx + sg * (g.L + 0.02), cv.min() - 0.012, cv.max() + 0.012)
        b[f"{side} upper abdomen"] = _span(g.cx, lat, g.dome[side], g.cp[side] + 0.2)
    um = (g.cx - g.med - 0.015, g.apex - 0.02, g.cx + g.med + 0.035, g.heart_top)
    ca_v = hy1 + 0.25 * (hy2 - hy1)
    ca_u = hcu - rx * np.sqrt(1 - ((ca_v - hcv) / ry) ** 2)
    b.update({
        "trachea": (g.tx - g.tw - 0.004, g.apex - 0.06, g.tx + g.tw + 0.004, g.carina),
        "spine": (g.cx - g.spine_w, g.apex - 0.06, g.cx + g.spine_w, max(g.cp.values()) + 0.06),
        "aortic arch": (g.cx + g.med - 0.023, g.knob_v - 0.024, g.cx + g.med + 0.033, g.knob_v + 0.024),
        "upper mediastinum": um,
        "mediastinum": (min(um[0], hx1), um[1], max(um[2], hx2), hy2),
        "svc": (g.cx - g.med - 0.015, g.knob_v - 0.02, g.cx - 0.01, g.heart_top + 0.03),
        "cardiac silhouette": (hx1, hy1, hx2, hy2),
        "right cardiac silhouette": (hx1, hy1, g.cx, hy2),
        "left cardiac silhouette": (g.cx, hy1, hx2, hy2),
        "cavoatrial junction": (ca_u - 0.02, ca_v - 0.025, ca_u + 0.03, ca_v + 0.025),
        "right atrium": (hx1, hcv - 0.3 * ry, g.cx - 0.01, min(hcv + 0.8 * ry, hy2)),
        "descending aorta": (g.cx + g.med - 0.015, g.knob_v + 0.02, g.cx + g.med + 0.015, g.dome["left"]),
        "carina": (g.tx - 0.03, g.carina - 0.02, g.tx + 0.03, g.carina + 0.025),
        "abdomen": (g.cx - g.L - 0.02, min(g.dome.values()), g.cx + g.L + 0.02, max(g.cp.values()) + 0.35),
    })
    return b


def _finish(a: np.ndarray, grid: _Grid, gain: float, bias: float, gamma: float, r: np.random.Generator) -> np.ndarray:
    """Exposure, quantum mottle (which also dithers) and 8-bit quantization at working size, gamma as a lookup table;
    then an 8-bit bilinear upscale (several times cheaper than float in PIL) and per-pixel grain from one tile,
    added in cache-sized strips."""
    a = gain * a + bias + 0.01 * r.standard_normal(a.shape, dtype=np.float32)
    small = Image.fromarray(np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8))
    small = small.point([round(255 * (i / 255) ** gamma) for i in range(256)])
    if (grid.w, grid.h) == (grid.W, grid.H):
        return np.asarray(small, dtype=np.float32) * np.float32(1 / 255)
    u8 = np.asarray(small.resize((grid.W, grid.H), Image.BILINEAR))
    tile = 0.008 * r.standard_normal((min(grid.H, 263), min(grid.W, 257)), dtype=np.float32)
    img = np.empty((grid.H, grid.W), np.float32)
    strip = min(64, tile.shape[0])
    for k, y in enumerate(range(0, grid.H, strip)):
        out = img[y:y + strip]
        np.multiply(u8[y:y + strip], np.float32(1 / 255), out=out)
        ro = (k * 67) % (tile.shape[0] - strip + 1)
        for x in range(0, grid.W, tile.shape[1]):
            block = out[:, x:x + tile.shape[1]]
            block += tile[ro:ro + block.shape[0], :block.shape[1]]
        np.clip(out, 0.0, 1.0, out=out)
    return img


def _validate(width: int, height: int, lesions: Sequence[Lesion]) -> None:
    if width < 16 or height < 16:
        raise ValueError(f"image too small: {width}x{height}")
    for les in lesions:
        if les.kind not in LESION_KINDS:
            raise ValueError(f"unknown lesion kind {les.kind!r}")
        if les.side not in (None, "right", "left") or (les.side is None and les.kind not in ("cardiomegaly", "edema")):
            raise ValueError(f"bad side {les.side!r} for {les.kind}")
        if les.zone not in (None, *_ZONES):
            raise ValueError(f"bad zone {les.zone!r}")


def render_frontal(width: int, height: int, lesions: Sequence[Lesion], rng: np.random.Generator) -> Phantom:
    """PA chest radiograph with its 36 anatomy boxes and one tight box per lesion (see module docstring)."""
    _validate(width, height, lesions)
    s_geo, s_tex, s_grain, s_les = (int(x) for x in rng.integers(0, 2**63, size=4))
    grid = _Grid(width, height)
    g = _sample_geometry(np.random.default_rng(s_geo))
    cardio = [les.severity for les in lesions if les.kind == "cardiomegaly"]
    if cardio:
        sev = max(cardio)
        g = replace(g, ctr=0.5 + 0.14 * sev, heart_top=g.heart_top - 0.04 * sev)
    tex = np.random.default_rng(s_tex)
    a, lungs, vessels = _anatomy(g, grid, tex)
    patch = _smooth_noise(tex, (24, 20), grid)
    a += vessels
    anatomy = {name: grid.to_px(box) for name, box in _anatomy_boxes(g).items()}
    boxes: list[Box] = []
    for i, les in enumerate(lesions):
        if les.kind == "cardiomegaly":
            boxes.append(anatomy["cardiac silhouette"])
            continue
        delta, mask, win = _lesion(les, g, grid, lungs, vessels, patch, np.random.default_rng([s_les, i]))
        a[win] += delta
        boxes.append(grid.mask_box(mask, win))
    image = _finish(a, grid, g.gain, g.bias, g.gamma, np.random.default_rng(s_grain))
    return Phantom(image=image, anatomy={n: anatomy[n] for n in CIG_BBOX_NAMES_36}, lesion_boxes=boxes)


def render_lateral(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Plausible lateral view (anterior to image left): sternum, retrosternal air, heart, spine, domes; no boxes.

    Takes one ``rng.integers(..., size=4)`` draw, like render_frontal."""
    _validate(width, height, ())
    s_geo, s_tex, s_grain, _ = (int(x) for x in rng.integers(0, 2**63, size=4))
    grid, r = _Grid(width, height), np.random.default_rng(s_geo)
    u, v, soft = grid.u, grid.v, grid.soft
    cx, apex, base, depth = 0.5 + r.normal(0, 0.01), r.uniform(0.09, 0.13), r.uniform(0.7, 0.76), r.uniform(0.3, 0.35)
    bw = 0.1 + (depth + 0.07 - 0.1) * (0.5 + 0.5 * np.tanh((v - apex + 0.05) / 0.06))
    du = np.abs(u - cx)
    body = soft(bw - du)
    a = 0.5 * body * (0.4 + 0.6 * np.sqrt(np.clip(1 - (du / bw) ** 2, 0, 1))) + 0.02
    dome = base - 0.1 * np.clip(1 - ((u - cx + 0.03) / depth) ** 2, 0, 1) + 0.06 * (u - cx)   # anterior dome higher
    half_h = 0.5 * (base - apex) + 0.04
    lung = soft(_ellipse(u, v, cx + 0.01, apex + half_h, depth * 0.85, half_h)) * soft(dome - v)
    heart = soft(_ellipse(u, v, cx - 0.09, base - 0.12, 0.15, 0.14))
    a -= 0.3 * lung * (1 - 0.75 * heart) * (1 + 0.08 * _smooth_noise(r, (10, 9), grid))
    spine_u = cx + depth * 0.78 - 0.04 * np.sin(np.pi * np.clip((v - apex) / (base - apex + 0.2), 0, 1))  # kyphosis
    ph = (v - apex) / 0.05
    vert = np.where(ph - np.floor(ph) < 0.8, np.float32(1), np.float32(0.75))                          # disc spaces
    a += 0.12 * soft(0.035 - np.abs(u - spine_u)) * vert * body
    sternum = soft(0.008 - np.abs(u - (cx - depth * 0.92 + 0.05 * (v - apex))))
    a += 0.1 * sternum * soft(v - apex) * soft(base - 0.1 - v)
    a -= 0.08 * soft(0.012 - np.abs(u - cx - 0.1 + 0.12 * v)) * soft(apex + 0.25 - v) * body            # trachea
    a += 0.012 * _smooth_noise(np.random.default_rng(s_tex), (60, 52), grid) * body
    return _finish(a, grid, r.uniform(0.9, 1.1), r.uniform(-0.04, 0.03), r.uniform(0.85, 1.2),
                   np.random.default_rng(s_grain))
