"""Phantom axial lumbar spine MRI at a disc level, drawn from the findings at that level.

Geometry is in millimetres in the patient's frame: origin at the disc centre, x towards the
patient's left (image right, the radiological convention), y posterior (image down). Every
structure is a signed-distance field (negative inside) painted in anatomical order with a
one-pixel edge ramp, which anti-aliases edges without supersampling.

Pathology changes shapes - the disc margin, the thecal sac, foramina, facets, ligamenta flava -
and two local T2 signals (nucleus hydration, annular tear), never the global intensity or the
position of anything: those come from the nuisance model, sampled per image and larger than
any pathological change, so that a linear model on raw pixels cannot find the findings while
a CNN, which sees shapes wherever they are, can.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from lumbarclip.data.lesions import ImageLesions
from lumbarclip.findings import LEVELS, SEQUENCES, LevelFindings

#: Signal of each tissue as (T1, T2) on a 0..1 scale, before per-patient variation.
TISSUES: dict[str, tuple[float, float]] = {
    "fat": (0.92, 0.80),
    "muscle": (0.30, 0.22),
    "csf": (0.13, 0.95),
    "annulus": (0.34, 0.19),
    "nucleus": (0.38, 0.80),
    "herniation": (0.36, 0.44),  # displaced nuclear material: brighter than annulus on T2
    "cortex": (0.06, 0.05),
    "marrow": (0.68, 0.46),
    "ligament": (0.27, 0.16),
    "root": (0.33, 0.25),
    "joint": (0.22, 0.70),
    "artery": (0.05, 0.05),  # flow void
    "vein": (0.22, 0.32),  # slow flow
    "bowel": (0.42, 0.50),
    "tear": (0.36, 0.92),  # high-intensity zone
}
#: The view is centred this far behind the disc centre, which puts the canal mid-image.
VIEW_CENTRE_Y_MM = 22.0
#: How far a bulge reaches behind its healthy margin once it has filled the posterior
#: concavity, by severity (mm): broad, all round the disc (30% of it in front), and lower
#: than a protrusion's focal dome of the same severity.
_BULGE_MM = {"none": 3.0, "mild": 3.0, "moderate": 4.2, "severe": 5.6}
#: How far the dome of a protrusion reaches beyond the healthy margin, by severity (mm), and
#: its angular width (sigma, degrees): focal, clearly beyond a bulge's margin.
_HERNIATION_MM = {"none": 5.0, "mild": 5.0, "moderate": 6.5, "severe": 8.0}
_PROTRUSION_WIDTH_DEG = 13.0
#: An extrusion reaches this much further through a narrower neck (sigma, degrees) and ends in
#: a fragment of this radius (mm) just beyond the tip: a dome wider than its base.
_EXTRUSION_EXTRA_MM = 3.5
_EXTRUSION_WIDTH_DEG = 9.0
_FRAGMENT_MM = 5.0
_SEVERITY_RANK = {"none": 0, "mild": 0, "moderate": 1, "severe": 2}
#: Thecal sac area kept by canal stenosis of each severity.
_SAC_AREA = {"none": 1.0, "mild": 0.78, "moderate": 0.64, "severe": 0.5}
#: How deep the disc indents the sac (mm) for each thecal sac finding.
_INDENT_MM = {"abutted": 0.4, "compressed": 2.2}
_GAP_MM = 1.5  # epidural space between a healthy disc and the sac
#: Angular width (sigma, radians) of the push that makes a disc reach what it compresses: a
#: bulge presses with its broad margin, a protrusion or extrusion with its focal dome.
_PUSH_WIDTH = {"bulge": 0.9, "protrusion": 0.35, "extrusion": 0.3}
#: A compressed traversing root: the disc fills its lateral recess (fat of 4 x 3.2 mm half-axes)
#: to 1.5 mm behind the root's healthy centre, and the root lies 3 mm further back and 1 mm
#: further out against the facet, flattened from 1.7 x 1.6 to 2.6 x 0.7 mm half-axes. A root
#: the disc does not compress keeps a fat halo (3.0 x 2.8 mm half-axes) the disc stays out of.
_ROOT_SHIFT_MM = (1.0, 3.0)
_ROOT_FLAT_MM = (2.6, 0.7)
_ROOT_HALO_MM = (3.0, 2.8)
#: Foraminal fat (5.5 x 3.8 mm half-axes) a narrowed foramen keeps, while the disc reaches this
#: far (mm) beyond its healthy margin into it: the disc obliterates most of the fat.
_FORAMEN_KEPT = 0.3
_FORAMEN_REACH_MM = 5.5
#: Nucleus T2 contrast (over the annulus) a desiccated disc keeps: a dark disc, near the annulus.
_DRY_HYDRATION = 0.3
#: Annular tear: a high-intensity zone of 8 x 3 mm along the posterior annulus, its centre
#: this deep (mm) inside the disc margin, between the margin and the nucleus.
_TEAR_MM = (4.0, 1.5)
_TEAR_DEPTH_MM = 2.8
#: Facet hypertrophy: articular processes and joint this many times their healthy size.
_FACET_GROWTH = 1.5


@dataclass(frozen=True)
class Anatomy:
    """One patient's body and spine, shared by the patient's six images (mm unless named)."""

    fov_mm: float = 175.0
    body_half_width: float = 150.0
    body_half_depth: float = 115.0
    fat_posterior: float = 18.0
    fat_lateral: float = 28.0
    disc_half_width: float = 24.0
    disc_half_depth: float = 16.5
    sac_half_width: float = 9.0
    sac_half_depth: float = 7.0
    muscle: float = 1.0  # bulk of paraspinal muscles and psoas
    fatty_infiltration: float = 0.1  # how much of the muscle texture is fat
    hydration: float = 1.0  # T2 contrast of a healthy nucleus relative to a young adult's
    view_offset: tuple[float, float] = (0.0, 0.0)  # patient positioning in the coil
    cauda_equina: tuple[tuple[float, float], ...] = ()  # roots in unit-sac coordinates
    contrast: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(TISSUES))

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Anatomy:
        """A plausible adult: habitus, canal and disc size vary independently of findings."""
        u = rng.uniform
        size = u(0.92, 1.08)
        n_roots = int(rng.integers(9, 14))
        angles = np.sort(u(0.15, math.pi - 0.15, n_roots))
        radii = u(0.45, 0.8, n_roots)
        roots = tuple((float(np.cos(a) * r), float(np.sin(a) * r)) for a, r in zip(angles, radii))
        contrast = {
            name: (t1 * float(u(0.92, 1.08)), t2 * float(u(0.92, 1.08)))
            for name, (t1, t2) in TISSUES.items()
        }
        return cls(
            fov_mm=float(u(160.0, 190.0)),
            body_half_width=float(u(125.0, 175.0)),
            body_half_depth=float(u(95.0, 135.0)),
            fat_posterior=float(u(7.0, 32.0)),
            fat_lateral=float(u(12.0, 45.0)),
            disc_half_width=float(24.0 * size * u(0.95, 1.05)),
            disc_half_depth=float(16.5 * size * u(0.95, 1.05)),
            sac_half_width=float(u(8.0, 10.0)),
            sac_half_depth=float(u(6.0, 7.8)),
            muscle=float(u(0.85, 1.15)),
            fatty_infiltration=float(u(0.0, 0.3)),
            hydration=float(u(0.75, 1.05)),
            view_offset=(float(u(-4.0, 4.0)), float(u(-4.0, 4.0))),
            cauda_equina=roots,
            contrast=contrast,
        )


@dataclass(frozen=True)
class Nuisance:
    """Acquisition of one image; `Nuisance()` is a clean, centred, noise-free image."""

    rotation_deg: float = 0.0
    shift_mm: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    gain: float = 1.0
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)  # log coil bias: posterior, lateral, radial
    noise: float = 0.0  # Rician sigma on the 0..1 tissue scale
    blur_px: float = 0.0
    ghost: float = 0.0  # phase error between k-space lines (breathing motion), radians
    ghost_axis: int = 0  # phase-encoding axis: 0 rows (AP), 1 columns (LR)
    tilt: float = 0.0  # slice obliquity: endplate marrow showing over the front of the disc

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Nuisance:
        u = rng.uniform
        return cls(
            rotation_deg=float(np.clip(rng.normal(0.0, 4.0), -10.0, 10.0)),
            shift_mm=(float(u(-14.0, 14.0)), float(u(-14.0, 14.0))),
            scale=float(u(0.94, 1.06)),
            gain=float(u(0.8, 1.2)),
            bias=(float(u(0.1, 0.6)), float(rng.normal(0.0, 0.15)), float(rng.normal(0.0, 0.25))),
            noise=float(u(0.015, 0.045)),
            blur_px=float(u(0.3, 0.9)),
            ghost=float(u(0.0, 0.25)),
            ghost_axis=int(rng.integers(0, 2)),
            tilt=float(min(abs(rng.normal(0.0, 0.35)), 0.8)),
        )


# --- signed distances (mm, negative inside) ---------------------------------------------------


def _ellipse(x, y, cx, cy, a, b, angle=0.0):
    """Ellipse distance to first order, (f - 1) / |grad f|: exact on the edge, where it matters."""
    dx, dy = x - cx, y - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    f = (dx / a) ** 2 + (dy / b) ** 2
    grad = 2.0 * np.sqrt((dx / (a * a)) ** 2 + (dy / (b * b)) ** 2) + 1e-6
    return (f - 1.0) / grad


def _segment(x, y, p0, p1, r):
    """Capsule of radius r around the segment p0-p1."""
    (x0, y0), (x1, y1) = p0, p1
    vx, vy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * vx + (y - y0) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    return np.hypot(x - x0 - t * vx, y - y0 - t * vy) - r


def _circles(x, y, centres, radius):
    """Union of equal circles in one broadcast."""
    c = np.asarray(centres, dtype=np.float32)
    return np.hypot(x[..., None] - c[:, 0], y[..., None] - c[:, 1]).min(axis=-1) - radius


def _band(sd, thickness):
    """A shell of the given thickness centred on the zero level of sd."""
    return np.abs(sd) - thickness / 2.0


def _side_signs(side: str) -> tuple[int, ...]:
    """x signs of a side: patient left is +x (image right) in the radiological convention."""
    return {"left": (1,), "right": (-1,), "both": (1, -1)}.get(side, ())


# --- per-level layout -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Level:
    """Proportions at one disc: lower discs are wider and flatter, facets turn coronal."""

    index: int  # 0 for L3-L4, 2 for L5-S1, negative above
    disc_w: float
    disc_d: float
    concavity: float  # depth of the healthy disc's posterior concavity
    sac_w: float
    sac_d: float
    facet_angle: float  # joint line from the sagittal plane, radians
    psoas: tuple[float, float]
    muscle: float
    skin_y: float  # posterior skin in the midline

    @classmethod
    def of(cls, anatomy: Anatomy, level: str) -> _Level:
        k = LEVELS.index(level) - 2
        disc_d = anatomy.disc_half_depth * (1.0 - 0.04 * k)
        concavity = (2.8, 2.2, 0.8)[min(max(k, 0), 2)]
        sac_d = anatomy.sac_half_depth * (1.0 - 0.06 * max(k, 0))
        back_of_sac = disc_d - concavity + _GAP_MM + 2 * sac_d
        return cls(
            index=k,
            disc_w=anatomy.disc_half_width * (1.0 + 0.05 * k),
            disc_d=disc_d,
            concavity=concavity,
            sac_w=anatomy.sac_half_width * (1.0 - 0.05 * max(k, 0)),
            sac_d=sac_d,
            facet_angle=math.radians(30.0 + 12.0 * k),
            psoas=(anatomy.muscle * (10.0 + 2.0 * k), anatomy.muscle * (13.0 + 2.0 * k)),
            muscle=anatomy.muscle,
            skin_y=back_of_sac + 46.0 * anatomy.muscle + anatomy.fat_posterior,
        )

    @property
    def sac_front(self) -> float:
        """Front of a healthy thecal sac: just behind the disc's posterior concavity."""
        return self.disc_d - self.concavity + _GAP_MM

    @property
    def canal_y(self) -> float:
        """Centre of the bony canal (it does not move when the sac is compressed)."""
        return self.sac_front + self.sac_d


def landmarks(anatomy: Anatomy, level: str) -> dict[str, tuple[float, float]]:
    """Points (mm, patient frame) inside named healthy structures, for checks and crops."""
    g = _Level.of(anatomy, level)
    return {
        "disc_centre": (0.0, 0.0),
        "nucleus": (0.0, -1.0),
        "annulus_posterior": (0.0, g.sac_front - _GAP_MM - 1.5),
        "sac_centre": (0.0, g.canal_y),
        "fat_posterior": (0.0, g.skin_y - anatomy.fat_posterior / 2),
        "erector_spinae_left": (32.0 * g.muscle, g.canal_y + 24.0 * g.muscle),
    }


def pixel_spacing_mm(anatomy: Anatomy, nuisance: Nuisance, size: int) -> float:
    """Physical size of one pixel of an image rendered with this anatomy and acquisition."""
    return anatomy.fov_mm / size / nuisance.scale


def _view(anatomy: Anatomy, nuisance: Nuisance) -> tuple[float, float, float]:
    """(rotation in radians, x and y of the image centre in the patient frame)."""
    return (
        math.radians(nuisance.rotation_deg),
        anatomy.view_offset[0] + nuisance.shift_mm[0],
        VIEW_CENTRE_Y_MM + anatomy.view_offset[1] + nuisance.shift_mm[1],
    )


def pixel_of(
    point: tuple[float, float], anatomy: Anatomy, nuisance: Nuisance, size: int
) -> tuple[float, float]:
    """(row, column) where a patient-frame point lands in the rendered image."""
    px = pixel_spacing_mm(anatomy, nuisance, size)
    a, cx, cy = _view(anatomy, nuisance)
    dx, dy = point[0] - cx, point[1] - cy
    u = math.cos(a) * dx - math.sin(a) * dy
    v = math.sin(a) * dx + math.cos(a) * dy
    return v / px + size / 2 - 0.5, u / px + size / 2 - 0.5


# --- the disc and its herniations -------------------------------------------------------------


def _herniation_angles(location: str, side: str) -> list[float]:
    """Polar angles of focal herniations: the posterior midline is pi/2, patient left smaller."""
    signs = _side_signs(side)
    if location in ("central", "diffuse"):
        return [math.pi / 2 - (0.2 * signs[0] if len(signs) == 1 else 0.0)]
    offset = {"paracentral": 0.42, "foraminal": 0.95}[location]
    return [math.pi / 2 - s * offset for s in (signs or (1, -1))]


def _healthy_margin(g: _Level, theta: np.ndarray) -> np.ndarray:
    """Radius of a healthy disc: a squarish oval with a shallow posterior concavity."""
    c, s = np.abs(np.cos(theta)), np.abs(np.sin(theta))
    r = ((c / g.disc_w) ** 2.6 + (s / g.disc_d) ** 2.6) ** (-1.0 / 2.6)
    return r - g.concavity * np.exp(-(((theta - math.pi / 2) / 0.38) ** 2))


class _Disc:
    """Disc margin in polar form r(theta) about the disc centre, with the herniations on it."""

    def __init__(self, geo: _Level, lf: LevelFindings) -> None:
        self.geo = geo
        self.bumps: list[tuple[float, float, float]] = []  # (angle, height mm, width rad)
        self.bulge = 0.0
        self.bulge_side = 0
        self.fragment: tuple[float, float, float] | None = None  # extruded tip: x, y, radius
        self.spared: list[tuple[float, float, float, float, float]] = []  # ellipses kept free
        if lf.disc == "bulge":
            self.bulge = _BULGE_MM[lf.severity]
            signs = _side_signs(lf.side)
            self.bulge_side = signs[0] if len(signs) == 1 else 0
        elif lf.disc in ("protrusion", "extrusion"):
            extruded = lf.disc == "extrusion"
            height = _HERNIATION_MM[lf.severity] + (_EXTRUSION_EXTRA_MM if extruded else 0.0)
            width = math.radians(_EXTRUSION_WIDTH_DEG if extruded else _PROTRUSION_WIDTH_DEG) * (
                2.0 if lf.location == "diffuse" else 1.0
            )
            self.bumps = [(a, height, width) for a in _herniation_angles(lf.location, lf.side)]
            if extruded:
                angle = self.bumps[0][0]
                r = self.radius(np.array([angle]))[0] + 1.0
                self.fragment = (r * math.cos(angle), r * math.sin(angle), _FRAGMENT_MM)

    def base(self, theta: np.ndarray) -> np.ndarray:
        return _healthy_margin(self.geo, theta)

    def radius(self, theta: np.ndarray) -> np.ndarray:
        r = self.base(theta)
        if self.bulge:  # fills the concavity, then extends all round, most behind
            back = np.exp(-(((theta - math.pi / 2) / 0.38) ** 2))
            post = np.exp(-(((theta - math.pi / 2) / 1.0) ** 2))
            lean = 1.0 + 0.6 * self.bulge_side * np.cos(theta)
            r = r + self.geo.concavity * back + self.bulge * (0.3 + 0.7 * post) * lean
        for angle, height, width in self.bumps:
            r = r + height * np.exp(-0.5 * ((theta - angle) / width) ** 2)
        return r

    def reach(self, angle: float) -> float:
        """How far beyond the healthy margin the disc reaches at one angle (mm)."""
        a = np.array([angle])
        return float(self.radius(a)[0] - self.base(a)[0])

    def push(self, angle: float, needed: float, width: float) -> None:
        """Herniate further so the disc reaches `needed` mm beyond its healthy margin there."""
        missing = needed - self.reach(angle)
        if missing > 0:
            self.bumps.append((angle, missing, width))

    def push_to(self, point: tuple[float, float], width: float) -> None:
        """Herniate until the margin reaches a point (a nerve root it compresses)."""
        angle = math.atan2(point[1], point[0])
        healthy = float(self.base(np.array([angle]))[0])
        self.push(angle, math.hypot(*point) - healthy, width)

    def spare(self, cx: float, cy: float, a: float, b: float, angle: float = 0.0) -> None:
        """Keep the disc's growth out of an ellipse: a recess or foramen the findings leave open."""
        self.spared.append((cx, cy, a, b, angle))

    def sd(self, x, y):
        """Signed distance to the diseased margin, and to the healthy one."""
        rho, theta = np.hypot(x, y), np.arctan2(y, x)
        d, d_healthy = rho - self.radius(theta), rho - self.base(theta)
        if self.fragment:
            fx, fy, fr = self.fragment
            d = np.minimum(d, np.hypot(x - fx, y - fy) - fr)
        for ellipse in self.spared:  # the healthy disc stays; only its growth is kept out
            d = np.minimum(d_healthy, np.maximum(d, -_ellipse(x, y, *ellipse)))
        return d, d_healthy


# --- the renderer -----------------------------------------------------------------------------


class _Canvas:
    """Pixel grid mapped into the patient frame; `paint` composites one structure over it."""

    def __init__(self, size: int, anatomy: Anatomy, nuisance: Nuisance) -> None:
        self.px = pixel_spacing_mm(anatomy, nuisance, size)
        c = (np.arange(size, dtype=np.float32) + 0.5 - size / 2) * np.float32(self.px)
        u, v = np.meshgrid(c, c)
        a, cx, cy = _view(anatomy, nuisance)
        self.x = (math.cos(a) * u + math.sin(a) * v + cx).astype(np.float32)
        self.y = (-math.sin(a) * u + math.cos(a) * v + cy).astype(np.float32)
        self.img = np.zeros((size, size), dtype=np.float32)

    def cover(self, sd, edge_mm: float | None = None):
        """Fraction of each pixel inside; the edge ramp is one pixel unless told wider."""
        return np.clip(0.5 - sd / (edge_mm or self.px), 0.0, 1.0)

    def paint(self, sd, value, edge_mm: float | None = None) -> None:
        self.img += self.cover(sd, edge_mm) * (value - self.img)

    def crop(self, rows: slice, cols: slice) -> _Canvas:
        """A copy of part of the canvas, to redraw only where something can change."""
        part = copy.copy(self)
        part.x, part.y, part.img = self.x[rows, cols], self.y[rows, cols], self.img[rows, cols].copy()
        return part


def _smooth_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """Unit-variance smooth random field for tissue texture."""
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma_px)
    return noise / (noise.std() + 1e-6)


def render_slice(
    level: LevelFindings,
    sequence: str,
    size: int,
    rng: np.random.Generator,
    anatomy: Anatomy | None = None,
    nuisance: Nuisance | None = None,
) -> np.ndarray:
    """One axial slice through the disc at `level.level`: float32, tissue scale about 0..1.

    `nuisance` and `anatomy` default to a random acquisition and patient drawn from `rng`
    (in that order); the findings never change how `rng` is used, so one seed renders the
    same acquisition, texture and noise for a healthy and a diseased disc.
    """
    return _render(level, sequence, size, rng, anatomy, nuisance, with_lesions=False)[0]


def render_slice_with_lesions(
    level: LevelFindings,
    sequence: str,
    size: int,
    rng: np.random.Generator,
    anatomy: Anatomy | None = None,
    nuisance: Nuisance | None = None,
) -> tuple[np.ndarray, Lesions]:
    """`render_slice`'s image (the same pixels) and its `find_lesions`, drawn with its texture."""
    return _render(level, sequence, size, rng, anatomy, nuisance, with_lesions=True)


def _render(
    level: LevelFindings,
    sequence: str,
    size: int,
    rng: np.random.Generator,
    anatomy: Anatomy | None,
    nuisance: Nuisance | None,
    with_lesions: bool,
) -> tuple[np.ndarray, Lesions]:
    if sequence not in SEQUENCES:
        raise ValueError(f"sequence must be one of {', '.join(SEQUENCES)}; got {sequence!r}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels; got {size}")
    nuisance = Nuisance.sample(rng) if nuisance is None else nuisance
    anatomy = Anatomy.sample(rng) if anatomy is None else anatomy
    canvas = _Canvas(size, anatomy, nuisance)
    fine = _smooth_noise(rng, size, max(0.6, 1.2 / canvas.px))
    coarse = _smooth_noise(rng, size, max(1.5, 6.0 / canvas.px))
    _draw(canvas, level, sequence, anatomy, nuisance.tilt, fine, coarse)
    found = find_lesions(level, sequence, size, anatomy, nuisance, (fine, coarse)) if with_lesions else None
    return _acquire(canvas.img, nuisance, rng), found


def _draw(
    canvas: _Canvas, level: LevelFindings, sequence: str, anatomy: Anatomy, tilt: float, fine, coarse
) -> np.ndarray:
    """The noise-free image before acquisition: every structure, in anatomical order."""
    tone = _tones(anatomy, sequence)
    geo = _Level.of(anatomy, level.level)
    _draw_body(canvas, tone, anatomy, geo, fine, coarse)
    _draw_vessels(canvas, tone, geo)
    _draw_spine(canvas, tone, anatomy, geo, level, tilt)
    return canvas.img


def _tones(anatomy: Anatomy, sequence: str) -> dict[str, float]:
    column = SEQUENCES.index(sequence)
    return {name: values[column] for name, values in anatomy.contrast.items()}


def _draw_spine(
    canvas: _Canvas, tone, anatomy: Anatomy, geo: _Level, level: LevelFindings, tilt: float
) -> None:
    """The structures pathology changes, over the body and vessels (which it never changes)."""
    _draw_canal(canvas, tone, anatomy, geo, level)
    _draw_posterior_elements(canvas, tone, geo, level)
    _draw_disc(canvas, tone, anatomy, geo, level, tilt)
    _draw_compressed_roots(canvas, tone, geo, level)


#: A finding shows where it changes the noise-free image by at least this much on the tissue
#: scale (acquisition noise has sigma 0.015..0.045), in a region of at least `VISIBLE_PIXELS`
#: pixels or with a pixel changed twice as much.
VISIBLE_CHANGE = 0.1
VISIBLE_PIXELS = 3
#: The `LevelFindings` fields behind each kind of lesion; "disc" is named by the disc finding.
_LESION_FIELDS: dict[str, tuple[str, ...]] = {
    "disc": ("disc", "location", "side", "severity"),
    "thecal_sac_compression": ("thecal_sac",),
    "root_compression": ("root_compression",),
    "canal_narrowing": ("canal_narrowing",),
    "foraminal_narrowing": ("foraminal_narrowing",),
    "facet_hypertrophy": ("facet_hypertrophy",),
    "ligamentum_hypertrophy": ("ligamentum_hypertrophy",),
    "desiccation": ("desiccation",),
    "annular_tear": ("annular_tear",),
}


@dataclass(frozen=True)
class Lesions:
    """Where an image's findings show: `boxes` `[{"kind", "box": [x0, y0, x1, y1]}]` (inclusive
    pixel columns and rows, one per connected region of a kind) and `mask` [H, W] bool, every
    pixel they visibly change - tighter than the boxes, which span a bulge's whole ring."""

    boxes: list[dict[str, object]]
    mask: np.ndarray

    def to_dict(self) -> dict[str, object]:
        """The `findings.jsonl` record of the image (`data.lesions.ImageLesions`)."""
        return ImageLesions.from_mask(self.boxes, self.mask).to_dict()


def find_lesions(
    level: LevelFindings,
    sequence: str,
    size: int,
    anatomy: Anatomy,
    nuisance: Nuisance,
    texture: tuple[np.ndarray, np.ndarray] | None = None,
) -> Lesions:
    """Where each finding at this level shows in the image `render_slice` draws with this
    anatomy and acquisition (see `Lesions`).

    Ground truth for saliency: a kind's region is where the noise-free image with all the
    level's findings differs visibly from the same image with that kind taken away (leave one
    out), so a box covers what the finding itself changes; pixels that only the findings together
    change (one hides another's effect) get boxes of kind "combined". Findings that change
    nothing visible (a dry disc on T1, a herniation that only matches a bulge already there) get
    no box.
    `texture`: the render's fine and coarse tissue texture (flat when not given), which sets
    the contrast of enlarged bone over fat-marbled muscle.
    """
    healthy = LevelFindings(level.level)
    mask = np.zeros((size, size), dtype=bool)
    if level == healthy:
        return Lesions([], mask)
    tone, geo = _tones(anatomy, sequence), _Level.of(anatomy, level.level)
    background = _Canvas(size, anatomy, nuisance)
    flat = np.zeros((size, size), dtype=np.float32)
    _draw_body(background, tone, anatomy, geo, *(texture or (flat, flat)))
    _draw_vessels(background, tone, geo)

    def ideal(lf: LevelFindings, window: tuple[slice, slice]) -> np.ndarray:
        canvas = background.crop(*window)
        _draw_spine(canvas, tone, anatomy, geo, lf, nuisance.tilt)
        return canvas.img

    # pathology stays within the disc, canal, foramina and facets: redraw only around them,
    # then only where all the findings together change the image
    x, y = background.x, background.y
    near = (np.abs(x) <= geo.disc_w + 32.0) & (y >= -geo.disc_d - 10.0) & (y <= geo.canal_y + 20.0)
    window = _bounds(near, size, 0)
    if window is None:
        return Lesions([], mask)
    full, healthy_img = ideal(level, window), ideal(healthy, window)
    changed = np.zeros((size, size), dtype=bool)
    changed[window] = np.abs(full - healthy_img) >= VISIBLE_CHANGE
    inner = _bounds(changed, size, 2)
    if inner is None:
        return Lesions([], mask)
    inner = tuple(slice(max(i.start, w.start), min(i.stop, w.stop)) for i, w in zip(inner, window))
    within = tuple(slice(i.start - w.start, i.stop - w.start) for i, w in zip(inner, window))
    full, total = full[within], np.abs(full - healthy_img)[within]
    top, left = inner[0].start, inner[1].start
    explained = np.zeros(full.shape, dtype=bool)
    boxes: list[dict[str, object]] = []
    for kind, names in _LESION_FIELDS.items():
        without = replace(level, **{name: getattr(healthy, name) for name in names})
        if without != level:
            for rows, cols, region in _visible_regions(np.abs(full - ideal(without, inner))):
                explained[rows, cols] |= region
                box = [left + cols.start, top + rows.start, left + cols.stop - 1, top + rows.stop - 1]
                boxes.append({"kind": level.disc if kind == "disc" else kind, "box": box})
    # where one finding hides another's change, only the findings together explain the pixels
    for rows, cols, region in _visible_regions(np.where(explained, 0.0, total)):
        box = [left + cols.start, top + rows.start, left + cols.stop - 1, top + rows.stop - 1]
        boxes.append({"kind": "combined", "box": box})
        explained[rows, cols] |= region
    mask[inner] = explained
    return Lesions(boxes, mask)


def _visible_regions(change: np.ndarray) -> list[tuple[slice, slice, np.ndarray]]:
    """(rows, columns, mask within them) of each visible connected region of a change map."""
    regions, _ = ndimage.label(change >= VISIBLE_CHANGE, np.ones((3, 3)))
    out = []
    for index, (rows, cols) in enumerate(ndimage.find_objects(regions), start=1):
        region = regions[rows, cols] == index
        if np.count_nonzero(region) >= VISIBLE_PIXELS or change[rows, cols][region].max() >= 2 * VISIBLE_CHANGE:
            out.append((rows, cols, region))
    return out


def _bounds(mask: np.ndarray, size: int, margin: int) -> tuple[slice, slice] | None:
    """Rows and columns around the True pixels, widened by `margin` within the image."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return None
    return tuple(
        slice(max(int(v[0]) - margin, 0), min(int(v[-1]) + margin + 1, size)) for v in (rows, cols)
    )


def _draw_bone(canvas: _Canvas, tone, sd, cortex_mm: float = 1.2) -> None:
    """Cortical rim (dark on both sequences) around fatty marrow."""
    canvas.paint(sd, tone["cortex"])
    canvas.paint(sd + cortex_mm, tone["marrow"])


def _draw_body(canvas: _Canvas, tone, anatomy: Anatomy, geo: _Level, fine, coarse) -> None:
    """Subcutaneous fat; abdominal wall, bowel and retroperitoneal fat in front; the paraspinal
    muscles behind in two lobes beside the spinous process; psoas beside the disc."""
    x, y, paint = canvas.x, canvas.y, canvas.paint
    m, cy = geo.muscle, geo.canal_y
    bw, bd = anatomy.body_half_width, anatomy.body_half_depth
    body_cy = geo.skin_y - bd
    paint(_ellipse(x, y, 0.0, body_cy, bw, bd), tone["fat"])
    inner = _ellipse(x, y, 0.0, body_cy, bw - anatomy.fat_lateral, bd - anatomy.fat_posterior)
    paint(inner, tone["fat"] * 0.92)  # retroperitoneal fat
    muscle = tone["muscle"] * (1.0 + 0.05 * fine)
    fatty = np.clip(anatomy.fatty_infiltration * 2.0 * (fine - 1.2), 0.0, 1.0)
    marbled = muscle + (tone["fat"] - muscle) * fatty
    wall = 11.0 * m
    paint(np.maximum(np.maximum(inner, -inner - wall), y - cy - 5.0), marbled)  # abdominal wall
    pw, pd = geo.psoas
    peritoneum = _ellipse(x, y, 0.0, -geo.disc_d - 40.0, 0.65 * bw, 40.0 + geo.disc_d + cy)
    retroperitoneum = _ellipse(x, y, 0.0, -8.0, geo.disc_w + 1.6 * pw, geo.disc_d + 14.0)
    viscera = np.maximum(np.maximum(inner + wall + 2.0, peritoneum), -retroperitoneum)
    paint(viscera, tone["bowel"] * (1.0 + 0.25 * coarse + 0.12 * fine))
    lobes = np.minimum(
        *(_ellipse(x, y, s * 24.0 * m, cy + 20.0 * m, 36.0 * m, 34.0 * m) for s in (1, -1))
    )
    paint(np.maximum(lobes, inner), marbled)
    septum = muscle + 0.45 * (tone["fat"] - muscle)
    for s in (1, -1):
        multifidus = _ellipse(x, y, s * 13.0 * m, cy + 26.0 * m, 12.0 * m, 22.0 * m, -s * 0.12)
        medial_or_behind = np.maximum(s * (s * 13.0 * m - x), y - cy - 36.0 * m)  # no septum there
        paint(np.maximum(_band(multifidus, 0.8), medial_or_behind), septum)
        if geo.index <= 1:  # quadratus lumborum, between psoas, erector spinae and the wall
            paint(
                _ellipse(x, y, s * (geo.disc_w + 36.0), cy - 6.0, 16.0 * m, 8.0 * m, -s * 0.3),
                marbled,
            )
        if geo.index >= 2:  # iliac wings between iliacus and gluteal muscle
            wing = (s * (geo.disc_w + 50.0), cy + 4.0)
            paint(_ellipse(x, y, *wing, 17.0 * m, 40.0, -s * 0.55), marbled)
            _draw_bone(canvas, tone, _ellipse(x, y, *wing, 4.5, 28.0, -s * 0.55), 1.3)
        paint(
            _ellipse(x, y, s * (geo.disc_w + pw * 0.8), -2.0 - geo.index * 2.0, pw, pd, s * 0.3),
            muscle,
        )


def _draw_vessels(canvas: _Canvas, tone, geo: _Level) -> None:
    """Aorta and IVC above the bifurcation, common iliac vessels below it."""
    x, y, paint = canvas.x, canvas.y, canvas.paint
    front = -geo.disc_d
    if geo.index <= 0:
        paint(_ellipse(x, y, 9.0, front - 12.0, 8.5, 8.5), tone["artery"])
        paint(_ellipse(x, y, -14.0, front - 9.0, 10.0, 6.5), tone["vein"])
    elif geo.index == 1:
        paint(_ellipse(x, y, -7.0, front - 7.0, 11.0, 6.0), tone["vein"])
        for s in (1, -1):
            paint(_ellipse(x, y, s * 9.0 + 2.0, front - 14.0, 5.5, 5.5), tone["artery"])
    else:
        for s in (1, -1):
            paint(_ellipse(x, y, s * 17.0, front - 3.0, 6.0, 4.5), tone["vein"])
            paint(_ellipse(x, y, s * 23.0, front - 10.0, 5.0, 5.0), tone["artery"])


def _recess(geo: _Level, side: int) -> tuple[float, float]:
    """Where the traversing root lies in the lateral recess on one side (+1 patient left)."""
    return side * (geo.sac_w + 1.0), geo.sac_front + 2.2


def _foramen_angle(side: int) -> float:
    """Polar angle, about the disc centre, of the neural foramen on one side."""
    return math.pi / 2 - side * 1.0


def _foramen(geo: _Level, side: int, kept: float = 1.0) -> tuple[float, float, float, float, float]:
    """Foraminal fat on one side as an ellipse (x, y, half-axes, angle), scaled by `kept`."""
    a = _foramen_angle(side)
    r = _healthy_margin(geo, np.array([a]))[0] + 4.2
    return r * math.cos(a), r * math.sin(a), 5.5 * kept, 3.8 * kept, a


def _diseased_disc(geo: _Level, lf: LevelFindings) -> _Disc:
    """The disc with its herniation, pushed as far as the findings' effects need it to reach,
    and kept out of the lateral recesses and foramina the findings leave open."""
    disc = _Disc(geo, lf)
    width = _PUSH_WIDTH.get(lf.disc, 0.5)
    if lf.thecal_sac in _INDENT_MM:
        indent = _INDENT_MM[lf.thecal_sac]
        if lf.thecal_sac == "compressed":
            indent += 0.8 * _SEVERITY_RANK[lf.severity]
        disc.push(math.pi / 2 - 0.15 * disc.bulge_side, geo.concavity + _GAP_MM + indent, width)
    compressed, narrowed = _side_signs(lf.root_compression), _side_signs(lf.foraminal_narrowing)
    for s in (1, -1):
        rx, ry = _recess(geo, s)
        if s in compressed:
            disc.push_to((rx, ry + 1.5), min(width, 0.45))
        else:
            disc.spare(rx, ry, *_ROOT_HALO_MM)
        if s in narrowed:
            disc.push(_foramen_angle(s), _FORAMEN_REACH_MM, 0.22)
        else:
            disc.spare(*_foramen(geo, s))
    return disc


def _draw_canal(canvas: _Canvas, tone, anatomy: Anatomy, geo: _Level, lf: LevelFindings) -> None:
    """Epidural fat, foramina with their exiting roots, the thecal sac and traversing roots."""
    x, y, paint = canvas.x, canvas.y, canvas.paint
    paint(_ellipse(x, y, 0.0, geo.canal_y + 0.5, geo.sac_w + 3.6, geo.sac_d + 3.0), tone["fat"])
    narrow_foramina = _side_signs(lf.foraminal_narrowing)
    for s in (1, -1):
        paint(_ellipse(x, y, *_recess(geo, s), 4.0, 3.2), tone["fat"])
        fx, fy, fa, fb, a = _foramen(geo, s, _FORAMEN_KEPT if s in narrow_foramina else 1.0)
        paint(_ellipse(x, y, fx, fy, fa, fb, a), tone["fat"])
        paint(_ellipse(x, y, fx, fy, 2.3, min(fb / 3.8, 1.0) * 1.6, a), tone["root"])
    # stenosis shrinks the sac from behind; the cauda equina lies dependent (posterior)
    keep = _SAC_AREA[lf.canal_narrowing]
    sac_w, sac_d = geo.sac_w * math.sqrt(keep), geo.sac_d * keep
    sac_y = geo.sac_front + sac_d
    paint(_ellipse(x, y, 0.0, sac_y, sac_w, sac_d), tone["csf"])
    if anatomy.cauda_equina:
        roots = [(cx * sac_w, sac_y + cy * sac_d) for cx, cy in anatomy.cauda_equina]
        paint(_circles(x, y, roots, 0.9), tone["root"])
    compressed = _side_signs(lf.root_compression)
    for s in (1, -1):  # traversing roots; compressed ones are drawn displaced, over the disc
        if s not in compressed:
            paint(_ellipse(x, y, *_recess(geo, s), 1.7, 1.6), tone["root"])


def _draw_compressed_roots(canvas: _Canvas, tone, geo: _Level, lf: LevelFindings) -> None:
    """Traversing roots the disc pushes back against the facet, flattened, over the disc."""
    for s in _side_signs(lf.root_compression):
        rx, ry = _recess(geo, s)
        dx, dy = _ROOT_SHIFT_MM
        canvas.paint(_ellipse(canvas.x, canvas.y, rx + s * dx, ry + dy, *_ROOT_FLAT_MM), tone["root"])


def _draw_disc(
    canvas: _Canvas, tone, anatomy: Anatomy, geo: _Level, lf: LevelFindings, tilt: float
) -> None:
    """Annulus, herniated material, nucleus and annular tear, painted over what they displace."""
    x, y, paint = canvas.x, canvas.y, canvas.paint
    disc = _diseased_disc(geo, lf)
    d, d_healthy = disc.sd(x, y)
    paint(d, tone["annulus"])
    if lf.disc in ("protrusion", "extrusion"):
        paint(np.maximum(d + 1.2, -d_healthy - 1.0), tone["herniation"])
    hydration = anatomy.hydration * (_DRY_HYDRATION if lf.desiccation else 1.0)
    nucleus = tone["annulus"] + (tone["nucleus"] - tone["annulus"]) * hydration
    paint(_ellipse(x, y, 0.0, -1.0, geo.disc_w * 0.66, geo.disc_d * 0.6), nucleus, edge_mm=2.5)
    if tilt:  # an oblique slice catches an endplate: partial volume of vertebral marrow
        weight = np.clip(tilt * (0.3 - y / geo.disc_d), 0.0, 0.9)
        canvas.img += canvas.cover(d_healthy) * weight * (tone["marrow"] - canvas.img)
    if lf.annular_tear:  # high-intensity zone in the back of the annulus, at the herniation
        a = disc.bumps[0][0] if disc.bumps else math.pi / 2 - 0.2
        r = disc.radius(np.array([a]))[0] - _TEAR_DEPTH_MM
        paint(_ellipse(x, y, r * math.cos(a), r * math.sin(a), *_TEAR_MM, a + math.pi / 2), tone["tear"])


def _draw_posterior_elements(canvas: _Canvas, tone, geo: _Level, lf: LevelFindings) -> None:
    """Ligamenta flava, facet joints, laminae and spinous process around the canal."""
    x, y, paint = canvas.x, canvas.y, canvas.paint
    w, d, cy = geo.sac_w, geo.sac_d, geo.canal_y
    thick = (
        2.6 + (3.0 if lf.ligamentum_hypertrophy else 0.0) + 0.8 * _SEVERITY_RANK[lf.canal_narrowing]
    )
    outer = 4.6  # hypertrophy thickens the ligament inwards, into the canal
    flavum = _band(_ellipse(x, y, 0.0, cy, w + outer - thick / 2, d + outer - thick / 2), thick)
    paint(np.maximum(flavum, cy - 1.0 - y), tone["ligament"])
    bone = np.maximum(
        _band(_ellipse(x, y, 0.0, cy, w + outer + 2.6, d + outer + 2.4), 4.4), cy + 1.0 - y
    )
    bone = np.minimum(bone, _segment(x, y, (0.0, cy + d + 7.0), (0.0, cy + d + 27.0), 3.4))
    big = _FACET_GROWTH if lf.facet_hypertrophy else 1.0
    phi = geo.facet_angle
    joints = []
    for s in (1, -1):
        jx, jy = s * (w + 10.0), cy + 1.0
        angle = math.atan2(
            math.cos(phi), s * math.sin(phi)
        )  # joint line runs anteromedial to posterolateral
        normal = (s * math.cos(phi), -math.sin(phi))  # towards the superior articular process
        for sign in (1, -1):  # superior (anterolateral) and inferior (posteromedial) processes
            off = sign * 3.6 * big
            process = _ellipse(
                x, y, jx + off * normal[0], jy + off * normal[1], 6.8 * big, 4.0 * big, angle
            )
            bone = np.minimum(bone, process)
        joints.append(
            _ellipse(x, y, jx, jy, 6.0 * big, 0.5 if lf.facet_hypertrophy else 0.8, angle)
        )
    _draw_bone(canvas, tone, bone, 1.1)
    paint(np.minimum(*joints), tone["joint"])


def _acquire(img: np.ndarray, nz: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """Scanner effects on the ideal image: coil bias and gain, blur, motion ghosts, Rician noise."""
    size = img.shape[0]
    t = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    u, v = np.meshgrid(t, t)
    img = img * (
        nz.gain * np.exp(nz.bias[0] * v + nz.bias[1] * u + nz.bias[2] * (u * u + v * v))
    ).astype(np.float32)
    if nz.blur_px > 0:
        img = ndimage.gaussian_filter(img, nz.blur_px)
    if nz.ghost > 0:  # periodic phase errors between phase-encoding lines replicate the body
        lines = np.arange(size)
        phase = nz.ghost * np.sin(
            2 * np.pi * lines * rng.uniform(0.04, 0.2) + rng.uniform(0, 2 * np.pi)
        )
        k = np.fft.fft2(img) * np.exp(1j * phase).reshape(
            (size, 1) if nz.ghost_axis == 0 else (1, size)
        )
        img = np.abs(np.fft.ifft2(k)).astype(np.float32)
    if nz.noise > 0:
        real = img + rng.normal(0.0, nz.noise, img.shape).astype(np.float32)
        img = np.hypot(real, rng.normal(0.0, nz.noise, img.shape).astype(np.float32))
    return img.astype(np.float32)
