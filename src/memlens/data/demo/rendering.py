"""Rendering a demo scene from its hidden parameters: sky and ground gradients, low-frequency colour noise,
clouds, texture, a wavy horizon, shaded and patterned objects, the salient object, and a simple camera
(vignette, exposure, sensor noise); plus the JPEG encoding of the files.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
from PIL import Image

from .scenes import DEMO_CATEGORIES, SceneParams

__all__ = ["JPEG_QUALITY", "render_scene", "jpeg_bytes"]

JPEG_QUALITY = 90

# The salient object takes one of the three of these most contrasting with what it covers.
_VIVID = np.array([
    (0.95, 0.08, 0.08), (1.0, 0.86, 0.05), (0.95, 0.15, 0.80), (0.05, 0.85, 0.95),
    (1.0, 0.50, 0.0), (0.55, 0.10, 0.95),
])


@lru_cache(maxsize=64)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    pos = (np.arange(n_out) + 0.5) / n_out * (n_in - 1)
    i0 = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    t = pos - i0
    t = t * t * (3.0 - 2.0 * t)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), i0] = 1.0 - t
    m[np.arange(n_out), i0 + 1] += t
    m.setflags(write=False)
    return m


def _noise(rng: np.random.Generator, size: int, grid: int, channels: int = 1) -> np.ndarray:
    """Smooth value noise (size, size, channels), about unit scale, with ``grid`` cells per side."""
    g = rng.standard_normal((channels, grid + 1, grid + 1), dtype=np.float32)
    m = _interp_matrix(size, grid + 1)
    return np.moveaxis(m @ g @ m.T, 0, -1)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    return a + (b - a) * t


class _Canvas:
    """Float RGB image in [0, 1]-ish with anti-aliased, shaded shapes."""

    def __init__(self, img: np.ndarray, light_x: float, night: bool):
        self.img = img
        self.size = img.shape[0]
        light = np.array([light_x, -0.65, 0.75])
        self.light = [float(x) for x in light / np.linalg.norm(light)]
        self.night = night

    def _patch(self, cx: float, cy: float, rx: float, ry: float):
        n = self.size
        x0, x1 = max(0, int((cx - rx) * n) - 2), min(n, int((cx + rx) * n) + 3)
        y0, y1 = max(0, int((cy - ry) * n) - 2), min(n, int((cy + ry) * n) + 3)
        if x1 <= x0 or y1 <= y0:
            return None
        xs = ((np.arange(x0, x1) + 0.5) / n).astype(np.float32)
        ys = ((np.arange(y0, y1) + 0.5) / n).astype(np.float32)
        return (slice(y0, y1), slice(x0, x1)), xs[None, :], ys[:, None]

    def shape(self, kind: str, cx: float, cy: float, a: float, b: float, color, *, shading: str = "flat",
              outline: float = 0.0, outline_color=None, stripes: tuple | None = None,
              windows: tuple | None = None, alpha: float = 1.0, petals: tuple = (5, 0.0)):
        """Draw one shape centred at (cx, cy) with half-sizes (a, b); return (mean before, mean after) colour."""
        a, b = max(a, 0.5 / self.size), max(b, 0.5 / self.size)
        patch = self._patch(cx, cy, a, b)
        if patch is None:
            return None
        sl, xs, ys = patch
        dx, dy = (xs - cx) / a, (ys - cy) / b
        dx, dy = np.broadcast_arrays(dx, dy)
        if kind == "ellipse":
            f = np.sqrt(dx * dx + dy * dy)
        elif kind == "rect":
            f = np.maximum(np.abs(dx), np.abs(dy))
        elif kind == "diamond":
            f = np.abs(dx) + np.abs(dy)
        elif kind == "triangle":  # apex up
            f = np.maximum(np.abs(dy), np.abs(dx) * 2.0 / np.maximum(dy + 1.0, 1e-6))
        elif kind == "hull":  # wider at the top
            f = np.maximum(np.abs(dy), np.abs(dx) / (1.0 - 0.18 * (dy + 1.0)))
        elif kind == "petals":
            k, phase = petals
            r = np.sqrt(dx * dx + dy * dy)
            f = r / (0.72 + 0.28 * np.cos(k * np.arctan2(dy, dx) + phase))
        else:  # pragma: no cover - programming error
            raise ValueError(kind)
        px = 1.0 / (self.size * min(a, b))  # one pixel in units of f
        cover = np.clip((1.0 - f) / px + 0.5, 0.0, 1.0) * alpha
        if not cover.any():
            return None
        col = np.broadcast_to(np.asarray(color, dtype=np.float32), dx.shape + (3,)).copy()
        if stripes is not None:
            freq, angle, color2, strength = stripes
            s = np.sin(2 * np.pi * freq * (dx * math.cos(angle) + dy * math.sin(angle))) > 0
            col = _lerp(col, np.asarray(color2, dtype=np.float32), strength * s[..., None])
        if windows is not None:
            nx, ny, wcolor = windows
            u, v = (dx + 1) / 2 * nx, (dy + 1) / 2 * ny
            fu, fv = u - np.floor(u), v - np.floor(v)
            w = (fu > 0.25) & (fu < 0.75) & (fv > 0.25) & (fv < 0.7) & (np.abs(dx) < 0.9) & (np.abs(dy) < 0.92)
            col[w] = wcolor
        if shading == "sphere":
            fz = np.clip(f, 0.0, 1.0)
            nz = np.sqrt(1.0 - fz * fz)
            lam = np.clip(dx * self.light[0] + dy * self.light[1] + nz * self.light[2], 0.0, 1.0)
            col = col * (0.35 + 0.8 * lam)[..., None]
        elif shading == "flat":
            col = col * (1.0 + 0.18 * (dx * self.light[0] + dy * self.light[1]))[..., None]
        if outline > 0:
            oc = np.asarray((0.05, 0.05, 0.05) if outline_color is None else outline_color, dtype=np.float32)
            ring = np.clip((f - (1.0 - outline)) / px + 0.5, 0.0, 1.0)
            col = _lerp(col, oc, ring[..., None])
        if self.night and windows is None:
            col = col * 0.45
        region = self.img[sl]
        inside = cover > 0.5
        before = region[inside].mean(axis=0) if inside.any() else region.reshape(-1, 3).mean(axis=0)
        region[:] = _lerp(region, np.clip(col, 0.0, 1.2), cover[..., None])
        after = region[inside].mean(axis=0) if inside.any() else before
        return before, after

    def glow(self, cx: float, cy: float, radius: float, color, strength: float) -> None:
        patch = self._patch(cx, cy, 3 * radius, 3 * radius)
        if patch is None:
            return
        sl, xs, ys = patch
        r2 = ((xs - cx) ** 2 + (ys - cy) ** 2) / (radius * radius)
        self.img[sl] += strength * np.exp(-r2)[..., None] * np.asarray(color, dtype=np.float32)

    def local_mean(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        patch = self._patch(cx, cy, rx, ry)
        if patch is None:
            return self.img.reshape(-1, 3).mean(axis=0)
        return self.img[patch[0]].reshape(-1, 3).mean(axis=0)


def _object_style(p: SceneParams, rng: np.random.Generator) -> dict:
    pattern = p["pattern"]
    strength = float(np.clip((pattern - 0.3) / 0.7, 0.0, 1.0)) * 0.6
    style: dict = {"outline": 0.1 if pattern > 0.5 else 0.0}
    if strength > 0:
        style["stripes"] = (float(rng.uniform(2.0, 5.0)), float(rng.uniform(0, np.pi)),
                            (0.95, 0.95, 0.9) if rng.random() < 0.5 else (0.08, 0.08, 0.1), strength)
    return style


def _draw_object(cv: _Canvas, kind: str, bx: float, by: float, h: float, color: np.ndarray,
                 style: dict, rng: np.random.Generator, night: bool) -> None:
    """One scene object with its base (bottom centre) at (bx, by) and height about h."""
    trunk = (0.35, 0.24, 0.14)
    ground_obj = kind not in ("boat", "buoy")
    if ground_obj:  # contact shadow
        cv.shape("ellipse", bx + 0.15 * h * cv.light[0], by, 0.38 * h, 0.06 * h, (0.0, 0.0, 0.0), alpha=0.3,
                 shading="none")
    if kind == "tree":
        cv.shape("rect", bx, by - 0.18 * h, 0.05 * h, 0.18 * h, trunk)
        cv.shape("ellipse", bx, by - 0.62 * h, 0.28 * h, 0.36 * h, color, shading="sphere", **style)
    elif kind == "pine":
        cv.shape("rect", bx, by - 0.08 * h, 0.04 * h, 0.08 * h, trunk)
        cv.shape("triangle", bx, by - 0.55 * h, 0.26 * h, 0.45 * h, color, **style)
    elif kind == "bush":
        cv.shape("ellipse", bx, by - 0.18 * h, 0.36 * h, 0.2 * h, color * 0.85, shading="sphere", **style)
    elif kind == "rock":
        grey = 0.5 * color + 0.5 * np.array([0.5, 0.48, 0.45])
        cv.shape("ellipse", bx, by - 0.14 * h, 0.34 * h, 0.17 * h, grey, shading="sphere", **style)
    elif kind == "cactus":
        cv.shape("rect", bx, by - 0.45 * h, 0.07 * h, 0.45 * h, color, **style)
        cv.shape("rect", bx + 0.11 * h, by - 0.45 * h, 0.06 * h, 0.03 * h, color)
        cv.shape("rect", bx + 0.16 * h, by - 0.58 * h, 0.04 * h, 0.15 * h, color)
    elif kind == "boat":
        cv.shape("hull", bx, by - 0.08 * h, 0.4 * h, 0.09 * h, color * 0.6 + 0.1, **style)
        cv.shape("rect", bx, by - 0.45 * h, 0.012 * h + 0.5 / cv.size, 0.3 * h, (0.2, 0.15, 0.1))
        cv.shape("triangle", bx + 0.14 * h, by - 0.48 * h, 0.14 * h, 0.3 * h, color, **style)
    elif kind == "buoy":
        cv.shape("ellipse", bx, by - 0.14 * h, 0.13 * h, 0.15 * h, color, shading="sphere",
                 stripes=(3.0, np.pi / 2, (0.95, 0.95, 0.95), 0.8), outline=style.get("outline", 0.0))
    elif kind == "tower":
        th = h * float(rng.uniform(0.9, 1.7))
        wcol = (1.0, 0.85, 0.45) if night else (0.15, 0.22, 0.35)
        cv.shape("rect", bx, by - th, 0.22 * h, th, color, windows=(4, max(3, int(th / h * 6)), wcol),
                 outline=style.get("outline", 0.0) * 0.5)
    elif kind == "house":
        cv.shape("rect", bx, by - 0.25 * h, 0.34 * h, 0.25 * h, color, windows=(3, 2, (0.2, 0.25, 0.35)),
                 **style)
        cv.shape("triangle", bx, by - 0.64 * h, 0.42 * h, 0.15 * h, (0.62, 0.22, 0.16))
    elif kind == "lamp":
        cv.shape("rect", bx, by - 0.4 * h, 0.015 * h + 0.5 / cv.size, 0.4 * h, (0.1, 0.1, 0.1))
        cv.glow(bx, by - 0.82 * h, 0.12 * h, (1.0, 0.8, 0.4), 0.6)
        cv.shape("ellipse", bx, by - 0.82 * h, 0.05 * h, 0.05 * h, (1.0, 0.95, 0.7), shading="none")
    elif kind == "flower":
        cv.shape("rect", bx, by - 0.3 * h, 0.02 * h + 0.5 / cv.size, 0.3 * h, (0.15, 0.45, 0.12))
        hue = np.clip(color + 0.18 * rng.standard_normal(3), 0.05, 1.0)
        cv.shape("petals", bx, by - 0.66 * h, 0.3 * h, 0.3 * h, hue, shading="sphere",
                 petals=(int(rng.integers(4, 8)), float(rng.uniform(0, 2 * np.pi))),
                 outline=style.get("outline", 0.0))
        cv.shape("ellipse", bx, by - 0.66 * h, 0.08 * h, 0.08 * h, (0.95, 0.8, 0.15), shading="sphere")
    elif kind == "fruit":
        cv.shape("ellipse", bx, by - 0.3 * h, 0.28 * h, 0.28 * h, color, shading="sphere", **style)
        cv.shape("ellipse", bx + 0.1 * h, by - 0.62 * h, 0.1 * h, 0.05 * h, (0.2, 0.5, 0.15))
    else:  # pragma: no cover - programming error
        raise ValueError(kind)


def _draw_salient(cv: _Canvas, p: SceneParams, horizon: float, rng: np.random.Generator) -> float:
    """Draw the salient object; return the measured colour contrast (object vs. what it covers)."""
    c, size, x = p.salient_contrast, p.salient_size, p.salient_x
    kind = p.salient_kind
    in_sky = kind in ("kite", "balloon")
    if in_sky:
        y = float(rng.uniform(0.1 + size, max(0.12 + size, horizon - size)))
    else:
        y = float(rng.uniform(horizon + 0.3 * (1 - horizon), 0.95 - 0.2 * size))
    cy = y if in_sky else y - size
    bg = cv.local_mean(x, cy, size, size)
    far = np.argsort(-((_VIVID - bg) ** 2).sum(axis=1), kind="stable")[:3]  # one of the 3 most contrasting
    vivid = _VIVID[int(far[int(rng.integers(3))])]
    color = bg + c * (vivid - bg)
    other = np.array((0.03, 0.03, 0.05)) if vivid.mean() > 0.5 else np.array((0.97, 0.97, 0.95))
    second = bg + c * (other - bg)
    night, cv.night = cv.night, False
    kw = dict(outline=0.14, outline_color=second, stripes=(2.5, float(rng.uniform(0, np.pi)), second, 0.9))
    if kind == "ball":
        cv.shape("ellipse", x + 0.15 * size * cv.light[0], y, 0.9 * size, 0.15 * size, (0.0, 0.0, 0.0),
                 alpha=0.3, shading="none")
        res = cv.shape("ellipse", x, y - size, size, size, color, shading="sphere", **kw)
    elif kind == "sign":
        cv.shape("rect", x, y - 0.6 * size, 0.05 * size + 0.5 / cv.size, 0.6 * size, (0.25, 0.25, 0.25))
        res = cv.shape("diamond", x, y - 1.6 * size, size, size, color, **kw)
    elif kind == "kite":
        cv.shape("rect", x + 0.3 * size, y + 1.3 * size, 0.3 / cv.size + 0.01 * size, 0.45 * size, second)
        res = cv.shape("diamond", x, y, 0.75 * size, size, color, **kw)
    else:  # balloon
        cv.shape("rect", x, y + 1.5 * size, 0.3 / cv.size + 0.01 * size, 0.6 * size, second)
        res = cv.shape("ellipse", x, y, 0.8 * size, size, color, shading="sphere", **kw)
    cv.night = night
    if res is None:
        return 0.0
    before, after = res
    return float(np.linalg.norm(after - before) / math.sqrt(3.0))


def render_scene(p: SceneParams, size: int) -> tuple[np.ndarray, float]:
    """Render one image: uint8 (size, size, 3) and the measured salient-object contrast."""
    cat = DEMO_CATEGORIES[p.cat]
    sub = cat.subs[p.sub]
    v = p.vector
    rng = np.random.default_rng(p.detail_seed)
    n = size  # shapes are anti-aliased analytically: no supersampling needed
    xs = ((np.arange(n) + 0.5) / n).astype(np.float32)
    X, Y = xs[None, :], xs[:, None]
    v = v.astype(np.float32)
    sky_top, sky_bottom = v[0:3], v[3:6]
    g_far, g_near, obj = v[6:9], v[9:12], v[12:15]
    horizon, wave, cloud, texture, tscale = p["horizon"], p["wave"], p["cloudiness"], p["texture"], p["texture_scale"]

    ph = [float(x) for x in rng.uniform(0, 2 * np.pi, 3)]
    hz = horizon + wave * (0.6 * np.sin(2 * np.pi * 1.3 * X + ph[0]) + 0.4 * np.sin(2 * np.pi * 3.1 * X + ph[1]))
    # sky: gradient + low-frequency colour noise + clouds (+ stars at night)
    t = np.clip(Y / np.maximum(hz, 1e-3), 0.0, 1.0)
    sky = _lerp(sky_top, sky_bottom, (t**0.8)[..., None])
    sky = sky + 0.035 * _noise(rng, n, 3, 3)
    cn = _noise(rng, n, 5)[..., 0] + 0.5 * _noise(rng, n, 11)[..., 0]
    cmask = np.clip((cn - (1.3 - 1.8 * cloud)) * 1.2, 0.0, 1.0) * (0.3 + 0.6 * cloud)
    ccol = sky_bottom * 0.3 + (0.22 if sub.night else 0.96) * 0.7
    sky = _lerp(sky, ccol, cmask[..., None])
    if sub.night:
        k = int(rng.integers(40, 90))
        sx, sy = rng.integers(0, n, k), (rng.random(k) * rng.random(k) * horizon * n).astype(int)
        sky[sy, sx] += rng.uniform(0.3, 0.9, k)[:, None]
    sky_cv = _Canvas(sky, p["light_x"], False)
    if sub.sky_object == "sun":
        sx, sy = float(rng.uniform(0.25, 0.75)), float(horizon - rng.uniform(0.05, 0.2))
        sky_cv.glow(sx, sy, 0.16, (1.0, 0.6, 0.3), 0.5)
        sky_cv.shape("ellipse", sx, sy, 0.07, 0.07, (1.0, 0.85, 0.5), shading="none")
    elif sub.sky_object == "moon":
        sx, sy = float(rng.uniform(0.15, 0.85)), float(rng.uniform(0.12, max(0.14, horizon - 0.25)))
        sky_cv.glow(sx, sy, 0.12, (0.6, 0.65, 0.8), 0.35)
        sky_cv.shape("ellipse", sx, sy, 0.055, 0.055, (0.95, 0.95, 0.85), shading="none")
        sky_cv.shape("ellipse", sx + 0.015, sy - 0.01, 0.015, 0.012, (0.8, 0.8, 0.72), shading="none")

    # ground: gradient + textures by style + haze at the horizon
    g = np.clip((Y - hz) / np.maximum(1.0 - hz, 1e-3), 0.0, 1.0)
    ground = _lerp(g_far, g_near, g[..., None])
    grid = int(6 + 26 * tscale)
    tex = _noise(rng, n, grid)[..., 0] + 0.5 * _noise(rng, n, 2 * grid)[..., 0]
    ground = ground * (1.0 + 0.22 * texture * tex)[..., None]
    ground = ground + 0.03 * _noise(rng, n, 4, 3)
    if sub.style in ("water", "beach"):
        streak = np.sin(2 * np.pi * (18.0 * g**0.6 + 0.4 * _noise(rng, n, 6)[..., 0] + 0.0 * X))
        ground = ground + (0.05 + 0.05 * texture) * (streak > 0.7).astype(np.float32)[..., None]
        ground = _lerp(ground, sky_bottom, 0.25 * (1.0 - g)[..., None])
        if sub.style == "beach":
            shore = horizon + (1 - horizon) * (0.45 + 0.04 * np.sin(2 * np.pi * 1.7 * X + ph[2]))
            sand = _lerp(g_near, g_near * 0.85, g[..., None]) * (1.0 + 0.12 * tex)[..., None]
            foam = np.exp(-(((Y - shore) / 0.012) ** 2))[..., None]
            ground = np.where((Y > shore)[..., None], sand, ground)
            ground = _lerp(ground, np.array([0.97, 0.97, 0.95], dtype=np.float32), 0.7 * foam)
    elif sub.style == "street":
        road = np.abs(X - 0.5) < (0.04 + 0.42 * g)
        ground = np.where(road[..., None], ground * 0.7, ground)
        dash = (np.abs(X - 0.5) < (0.004 + 0.01 * g)) & (np.sin(2 * np.pi * 8 * g**0.5) > 0.2) & (g > 0.05)
        dash_col = np.array([0.85, 0.8, 0.5], dtype=np.float32) * (0.5 if sub.night else 1.0)
        ground = np.where(dash[..., None], dash_col, ground)
    elif sub.style == "lawn":
        ground = ground * (1.0 + 0.15 * texture * _noise(rng, n, 28)[..., 0])[..., None]
    haze = np.exp(-np.maximum(Y - hz, 0.0) / 0.06)
    ground = _lerp(ground, sky_bottom, (0.35 * haze)[..., None])
    cover = np.clip((Y - hz) * n + 0.5, 0.0, 1.0)[..., None]
    img = _lerp(sky, ground, cover)

    # objects, far to near
    cv = _Canvas(img, p["light_x"], sub.night)
    style = _object_style(p, rng)
    n_obj = int(round(p["n_objects"]))
    ox, osize = p["object_x"], p["object_size"]
    placed = []
    for _ in range(n_obj):
        bx = float(np.clip(ox + 0.22 * rng.standard_normal(), 0.04, 0.96))
        h_here = horizon + wave * (0.6 * math.sin(2 * np.pi * 1.3 * bx + ph[0])
                                   + 0.4 * math.sin(2 * np.pi * 3.1 * bx + ph[1]))
        depth = float(rng.uniform(0.02, 1.0) ** 1.5)
        if sub.style in ("water", "beach"):
            depth *= 0.4  # on the water, above the shore
        by = h_here + 0.01 + depth * (0.97 - h_here)
        scale = 0.45 + 0.9 * depth
        kind = sub.kinds[int(rng.integers(len(sub.kinds)))]
        color = np.clip(obj + 0.04 * rng.standard_normal(3), 0.0, 1.0)
        placed.append((by, kind, bx, osize * scale, color))
    for by, kind, bx, h, color in sorted(placed, key=lambda item: item[0]):
        _draw_object(cv, kind, bx, by, h, color, style, rng, sub.night)
    contrast = _draw_salient(cv, p, horizon, rng) if p.salient else 0.0

    # camera: vignette, exposure, downsample 2x, sensor noise
    img = cv.img * (1.0 - 0.5 * ((X - 0.5) ** 2 + (Y - 0.5) ** 2))[..., None]
    img = img * float(rng.uniform(0.95, 1.05))
    img = img + 0.008 * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(np.clip(img, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8), contrast


def jpeg_bytes(arr: np.ndarray) -> bytes:
    """``arr`` (uint8 RGB) as a JPEG file at :data:`JPEG_QUALITY`."""
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()
