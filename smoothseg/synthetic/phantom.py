"""Synthetic abdominal CT phantoms with liver, portal veins and tumours, in Hounsfield units.

A phantom is defined in continuous patient coordinates (LPS, mm; the liver near the origin) and then
sampled on a voxel grid with its own spacing, origin and direction. Anatomy, from the outside in:
air, patient table, subcutaneous fat, abdominal wall muscle, visceral fat with bowel loops (and gas),
ribs, lung bases above the diaphragm, heart, spine (vertebral bodies, discs, canal, spinous
processes), paraspinal and psoas muscles, aorta, IVC, kidneys (cortex and medulla), spleen, stomach
(with an air-fluid level), and an irregular liver with a portal-vein tree. Tumours (0-5 per case,
a few mm to over 10 cm) are hypo- or hyperdense, heterogeneous, some with a necrotic core.
The image gets partial-volume blur and spatially correlated noise.

Labels: 0 background, 1 liver, 2 tumour, 3 portal vein.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from smoothseg.dataset.io import Geometry
from smoothseg.labels import BACKGROUND, LIVER, TUMOR
from smoothseg.synthetic.fields import FourierField, capsule_distance, ellipsoid_level, rotation_matrix

#: The phantoms' raw labels: the output labels plus a portal-vein label (3) that belongs to the liver region, as in
#: HCC-TACE-Seg.
LABELS = {"background": BACKGROUND, "liver": LIVER, "tumor": TUMOR, "portal_vein": 3}


@dataclass(frozen=True)
class GridPreset:
    """Voxel grid of one phantom size: in-plane matrix, slice count range, spacing ranges (mm)."""

    matrix: int
    slices: tuple[int, int]
    inplane_mm: tuple[float, float]
    slice_mm: tuple[float, float]


SIZES: dict[str, GridPreset] = {
    # ~128x128x48: tests and the CPU demo.
    "small": GridPreset(128, (46, 50), (2.6, 3.2), (5.0, 6.0)),
    # ~512x512x100 at clinical CT spacing: benchmarks.
    "full": GridPreset(512, (92, 108), (0.66, 0.82), (2.5, 3.0)),
}


@dataclass
class Phantom:
    """One synthetic case: HU image (int16), label map (uint8), geometry, and the truth behind them."""

    image: np.ndarray
    label: np.ndarray
    geometry: Geometry
    info: dict[str, Any] = field(default_factory=dict)


def _f32(value: float) -> float:
    """Round to the nearest float32, so NIfTI (float32 header) stores the geometry exactly."""
    return float(np.float32(value))


def sample_geometry(rng: np.random.Generator, size: str) -> tuple[tuple[int, int, int], Geometry]:
    """A random grid (shape in (z, y, x)) and geometry for one case, centred near the liver.

    About a third of cases get a flipped direction matrix (left-right and/or head-feet), as produced
    by scanners and converters that store slices in another order.
    """
    preset = SIZES[size]
    inplane = _f32(round(rng.uniform(*preset.inplane_mm), 3))
    thickness = _f32(round(rng.uniform(*preset.slice_mm), 2))
    n_slices = int(rng.integers(preset.slices[0], preset.slices[1] + 1))
    shape_xyz = np.array([preset.matrix, preset.matrix, n_slices])
    spacing = np.array([inplane, inplane, thickness])
    flip = rng.choice(4, p=[0.64, 0.12, 0.12, 0.12])
    signs = {0: (1, 1, 1), 1: (-1, -1, 1), 2: (1, 1, -1), 3: (-1, 1, -1)}[int(flip)]
    direction = np.diag(signs).astype(float)
    centre = np.array([rng.uniform(-25, 5), rng.uniform(-5, 15), rng.uniform(-15, 15)])
    extent = direction @ ((shape_xyz - 1) * spacing)
    origin = centre - extent / 2
    geometry = Geometry(tuple(spacing), tuple(_f32(round(v, 2)) for v in origin), tuple(direction.ravel()))
    return (int(shape_xyz[2]), int(shape_xyz[1]), int(shape_xyz[0])), geometry


def physical_grid(shape_zyx: tuple[int, int, int], geometry: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Physical x, y, z (mm, float32) of every voxel centre, each of shape ``shape_zyx``."""
    k, j, i = (np.arange(n, dtype=np.float32) for n in shape_zyx)
    d = geometry.direction_matrix.astype(np.float32)
    s = np.asarray(geometry.spacing, dtype=np.float32)
    o = np.asarray(geometry.origin, dtype=np.float32)
    ii, jj, kk = (i * s[0])[None, None, :], (j * s[1])[None, :, None], (k * s[2])[:, None, None]
    return tuple(np.broadcast_to(o[a] + d[a, 0] * ii + d[a, 1] * jj + d[a, 2] * kk, shape_zyx).astype(np.float32)
                 for a in range(3))


@dataclass
class _Tissue:
    """Intensities (HU) drawn once per case: contrast phase and scanner vary between patients."""

    fat: float
    muscle: float
    liver: float
    spleen: float
    kidney_cortex: float
    kidney_medulla: float
    aorta: float
    ivc: float
    portal: float
    bone: float
    marrow: float
    bowel: float
    noise_sd: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> _Tissue:
        enhancement = rng.uniform(0.0, 1.0)  # 0 = early portal-venous, 1 = strong enhancement
        liver = rng.uniform(90, 125) + 20 * enhancement
        return cls(
            fat=rng.uniform(-115, -85), muscle=rng.uniform(45, 60), liver=liver,
            spleen=liver + rng.uniform(-5, 20), kidney_cortex=rng.uniform(160, 210),
            kidney_medulla=rng.uniform(100, 140), aorta=rng.uniform(140, 230) + 40 * enhancement,
            ivc=rng.uniform(100, 150), portal=liver + rng.uniform(45, 90), bone=rng.uniform(550, 850),
            marrow=rng.uniform(160, 260), bowel=rng.uniform(25, 55), noise_sd=rng.uniform(8, 22),
        )


@dataclass
class _Body:
    a: float  # half width (x), mm
    b: float  # half depth (y), mm
    subq: float  # subcutaneous fat, mm
    wall: float  # muscle wall, mm
    liver_scale: float
    liver_shift: np.ndarray
    liver_rotation: np.ndarray
    dome_z: float  # diaphragm dome height over the liver, mm

    @classmethod
    def sample(cls, rng: np.random.Generator, liver_scale_boost: float) -> _Body:
        return cls(a=rng.uniform(140, 175), b=rng.uniform(100, 128), subq=rng.uniform(8, 30), wall=rng.uniform(8, 14),
                   liver_scale=rng.uniform(0.88, 1.12) + liver_scale_boost,
                   liver_shift=rng.normal(0, 6, size=3), liver_rotation=rotation_matrix(rng, 10),
                   dome_z=rng.uniform(75, 95))


def _ellipse2d(x, y, cx, cy, a, b):
    return ((x - np.float32(cx)) / np.float32(a)) ** 2 + ((y - np.float32(cy)) / np.float32(b)) ** 2


def _liver_field(x, y, z, body: _Body, perturb: FourierField) -> np.ndarray:
    """Implicit liver: a soft union of three lobes, perturbed; < 1 inside."""
    r = body.liver_rotation.astype(np.float32)
    s = np.float32(body.liver_scale)
    px, py, pz = x - np.float32(body.liver_shift[0]), y - np.float32(body.liver_shift[1]), z - np.float32(
        body.liver_shift[2])
    lx = (r[0, 0] * px + r[1, 0] * py + r[2, 0] * pz) / s
    ly = (r[0, 1] * px + r[1, 1] * py + r[2, 1] * pz) / s
    lz = (r[0, 2] * px + r[1, 2] * py + r[2, 2] * pz) / s
    lobes = [
        ellipsoid_level(lx, ly, lz, (-70, 10, 0), (72, 78, 78)),  # right lobe
        ellipsoid_level(lx, ly, lz, (8, -42, 28), (68, 34, 38)),  # left lobe, across the midline anteriorly
        ellipsoid_level(lx, ly, lz, (-22, 22, 18), (40, 40, 46)),  # caudate / bridge
    ]
    sharp = np.float32(6.0)
    nearest = np.minimum.reduce(lobes)
    soft_min = nearest - np.log(sum(np.exp(-sharp * (v - nearest)) for v in lobes)) / sharp
    return soft_min * (1 + np.float32(0.12) * perturb(lx, ly, lz))


def _portal_tree(rng: np.random.Generator, body: _Body) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Portal vein segments (start, end, radius) in patient mm, from the hilum into the liver."""
    r, s, t = body.liver_rotation, body.liver_scale, body.liver_shift

    def to_patient(p_local):
        return r @ (np.asarray(p_local) * s) + t

    hilum = np.array([-20.0, 12.0, -18.0])
    segments = [(to_patient(hilum + [25, 10, -45]), to_patient(hilum), 7.0)]  # extrahepatic trunk

    def grow(start, direction, length, radius, depth):
        end = start + direction * length
        segments.append((to_patient(start), to_patient(end), radius))
        if depth == 0:
            return
        for _ in range(int(rng.integers(2, 4))):
            child = direction + rng.normal(0, 0.55, size=3)
            child /= np.linalg.norm(child)
            grow(end, child, length * rng.uniform(0.55, 0.75), radius * 0.65, depth - 1)

    grow(hilum, np.array([-0.85, 0.1, 0.35]) / np.linalg.norm([-0.85, 0.1, 0.35]), 55.0, 5.5, 2)  # right branch
    grow(hilum, np.array([0.8, -0.45, 0.3]) / np.linalg.norm([0.8, -0.45, 0.3]), 45.0, 4.5, 1)  # left branch
    return segments


def _sample_tumour_sizes(rng: np.random.Generator, tumour_free: bool) -> list[float]:
    """Diameters (mm): one dominant lesion (30% over 10 cm) plus 0-4 satellites of 4-30 mm."""
    if tumour_free:
        return []
    dominant = rng.uniform(100, 140) if rng.uniform() < 0.3 else float(np.exp(rng.uniform(np.log(12), np.log(90))))
    satellites = [float(np.exp(rng.uniform(np.log(4), np.log(30)))) for _ in range(int(rng.integers(0, 5)))]
    return [dominant] + satellites


def make_phantom(rng: np.random.Generator, size: str = "small", tumour_free: bool = False) -> Phantom:
    """Render one synthetic abdominal CT with labels. Deterministic for a given ``rng`` state."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    shape, geometry = sample_geometry(rng, size)
    tissue = _Tissue.sample(rng)
    diameters = _sample_tumour_sizes(rng, tumour_free)
    body = _Body.sample(rng, liver_scale_boost=0.12 if diameters and diameters[0] > 95 else 0.0)
    x, y, z = physical_grid(shape, geometry)
    vox_mm = np.asarray(geometry.spacing_zyx)

    air = np.float32(-1000)
    image = np.full(shape, air, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)

    # Body outline, table, fat and muscle wall.
    wobble = 1 + np.float32(0.04) * np.sin(z / np.float32(90))
    a, b = body.a * wobble, body.b * wobble
    outer = _ellipse2d(x, y, 0, 0, a, b)
    table = (y > body.b + 18) & (y < body.b + 28) & (np.abs(x) < 210)
    image[table] = 120
    inside = outer < 1
    image[inside] = tissue.fat
    muscle_a, muscle_b = a - body.subq, b - body.subq
    cavity_a, cavity_b = muscle_a - body.wall, muscle_b - body.wall
    image[_ellipse2d(x, y, 0, 0, muscle_a, muscle_b) < 1] = tissue.muscle
    cavity = _ellipse2d(x, y, 0, 0, cavity_a, cavity_b) < 1
    image[cavity] = tissue.fat + 15

    # Diaphragm: lungs and heart above, abdomen below.
    dome = np.float32(body.dome_z + body.liver_shift[2]) - np.float32(0.0016) * (x + 55) ** 2 + np.float32(0.12) * y
    thorax = cavity & (z > dome)

    # Bowel loops with gas, in the lower abdomen.
    bowel_field = FourierField.random(rng, 8, (25, 60))(x, y, z)
    bowel = cavity & ~thorax & (z < np.float32(body.liver_shift[2] + 10)) & (bowel_field > 0.35)
    image[bowel] = tissue.bowel
    image[bowel & (bowel_field > 1.25)] = -850

    # Stomach (left upper quadrant) with an air-fluid level.
    stomach = ellipsoid_level(x, y, z, (60, -35, body.liver_shift[2] + 35), (45, 38, 40)) < 1
    stomach &= cavity & ~thorax
    image[stomach] = tissue.bowel
    stomach_lumen = stomach & (ellipsoid_level(x, y, z, (60, -35, body.liver_shift[2] + 35), (39, 32, 34)) < 1)
    image[stomach_lumen] = 15
    image[stomach_lumen & (y < np.float32(-35 - 12))] = -900

    # Liver.
    liver_perturb = FourierField.random(rng, 6, (60, 160))
    liver = (_liver_field(x, y, z, body, liver_perturb) < 1) & cavity & ~thorax
    image[liver] = tissue.liver
    texture = FourierField.random(rng, 6, (8, 20))
    image[liver] += np.float32(4) * texture(x[liver], y[liver], z[liver])

    # Spleen (left, posterior) and kidneys.
    spleen = (ellipsoid_level(x, y, z, (0.62 * body.a, 0.15 * body.b, body.liver_shift[2] + 30), (28, 48, 55),
                              rotation_matrix(rng, 20)) < 1) & cavity & ~thorax
    image[spleen] = tissue.spleen
    organs = spleen.copy()
    for side, dz in ((-1, -15), (1, 0)):
        centre = (side * 75, 0.55 * body.b - 12, body.liver_shift[2] - 70 + dz)
        rot = rotation_matrix(rng, 15)
        kidney = ellipsoid_level(x, y, z, centre, (30, 28, 55), rot) < 1
        medulla = ellipsoid_level(x, y, z, centre, (20, 18, 42), rot) < 1
        image[kidney] = tissue.kidney_cortex
        image[medulla] = tissue.kidney_medulla
        organs |= kidney

    # Spine, canal, discs, spinous processes, paraspinal and psoas muscles.
    vb_y = 0.55 * body.b
    vertebra = _ellipse2d(x, y, 0, vb_y, 19, 17) < 1
    marrow = _ellipse2d(x, y, 0, vb_y, 15, 13) < 1
    disc = np.abs(((z + 500) % np.float32(32)) - 16) < 3.5
    spinous = _ellipse2d(x, y, 0, vb_y + 38, 6, 14) < 1
    canal = _ellipse2d(x, y, 0, vb_y + 24, 9, 8) < 1
    paraspinal = (_ellipse2d(x, y, -38, vb_y + 34, 27, 20) < 1) | (_ellipse2d(x, y, 38, vb_y + 34, 27, 20) < 1)
    psoas = ((_ellipse2d(x, y, -42, vb_y - 2, 17, 17) < 1) | (_ellipse2d(x, y, 42, vb_y - 2, 17, 17) < 1)) & (
        z < np.float32(body.liver_shift[2] - 45))
    image[paraspinal | psoas] = tissue.muscle
    image[vertebra | spinous] = tissue.bone
    image[marrow & ~disc] = tissue.marrow
    image[vertebra & disc] = 80
    image[canal] = 15
    spine = vertebra | spinous | canal | paraspinal | psoas

    # Great vessels.
    aorta = _ellipse2d(x, y, 18, vb_y - 30, 12, 12) < 1
    ivc = (_ellipse2d(x, y, -26, vb_y - 30, 12, 10) < 1) & ~thorax
    image[aorta] = tissue.aorta
    image[ivc] = tissue.ivc
    blockers = organs | spine | aorta | ivc | stomach

    # Lung bases, heart, ribs.
    heart = thorax & (ellipsoid_level(x, y, z, (20, -25, body.dome_z + body.liver_shift[2] + 45), (75, 65, 60)) < 1)
    lungs = thorax & ~heart & ~spine & ~aorta
    image[lungs] = -850 + np.float32(40) * texture(x[lungs], y[lungs], z[lungs])
    image[heart] = tissue.aorta * 0.6 + 20
    theta = np.arctan2(y, x)
    rib_ring = (_ellipse2d(x, y, 0, 0, cavity_a + 4, cavity_b + 4) < 1) & (
        _ellipse2d(x, y, 0, 0, cavity_a - 4, cavity_b - 4) > 1)
    rib_phase = np.sin(2 * np.pi * (z + np.float32(18) * theta) / np.float32(30))
    ribs = rib_ring & (rib_phase > 0.45) & (z > np.float32(body.liver_shift[2] - 70)) & ((y > -40) | (np.abs(x) > 60))
    image[ribs] = tissue.bone * 0.7

    # Liver excludes everything that overlaps it.
    liver &= ~blockers & ~ribs
    label[liver] = LABELS["liver"]

    # Portal veins: within the liver, plus the hilar trunk just outside it.
    hepatic_zone = ndimage.binary_dilation(liver, iterations=max(1, int(round(12 / vox_mm.min()))))
    zone_idx = np.nonzero(hepatic_zone & ~blockers & ~ribs)
    points = np.stack([x[zone_idx], y[zone_idx], z[zone_idx]], axis=1)
    vessel = np.zeros(len(points), dtype=bool)
    for start, end, radius in _portal_tree(rng, body):
        near = np.all((points > np.minimum(start, end) - radius) & (points < np.maximum(start, end) + radius), axis=1)
        if near.any():
            vessel[near] |= capsule_distance(points[near], start, end) < radius
    portal = np.zeros(shape, dtype=bool)
    portal[tuple(a[vessel] for a in zone_idx)] = True
    image[portal] = tissue.portal
    label[portal] = LABELS["portal_vein"]

    # Tumours, inside the liver only.
    tumours = _place_tumours(rng, diameters, liver, x, y, z, vox_mm, tissue, image, label)

    # Partial volume, then correlated noise.
    image = ndimage.gaussian_filter(image, sigma=0.55, mode="nearest")
    noise = ndimage.gaussian_filter(rng.normal(0, 1, size=shape).astype(np.float32), sigma=(0.3, 0.8, 0.8))
    noise *= np.float32(tissue.noise_sd / max(float(noise.std()), 1e-6))
    image = np.clip(np.rint(image + noise), -1024, 3071).astype(np.int16)

    voxel_ml = float(np.prod(vox_mm)) / 1000.0
    liver_region_ml = float(np.count_nonzero(label > 0)) * voxel_ml
    tumour_ml = float(np.count_nonzero(label == LABELS["tumor"])) * voxel_ml
    info = {
        "tumours": tumours,
        "n_tumours": len(tumours),
        "liver_region_ml": round(liver_region_ml, 3),
        "tumour_ml": round(tumour_ml, 3),
        "tlvr": round(tumour_ml / liver_region_ml, 6) if liver_region_ml else 0.0,
        "max_tumour_diameter_mm": round(max((t["diameter_mm"] for t in tumours), default=0.0), 2),
        "liver_hu": round(tissue.liver, 2),
        "noise_sd": round(tissue.noise_sd, 2),
    }
    return Phantom(image, label, geometry, info)


def _place_tumours(rng, diameters, liver, x, y, z, vox_mm, tissue: _Tissue, image, label) -> list[dict]:
    """Carve tumours into ``image``/``label`` in place; return what was placed."""
    if not diameters or not liver.any():
        return []
    depth = ndimage.distance_transform_edt(liver, sampling=vox_mm)
    placed: list[dict] = []
    for diameter in diameters:
        radius = diameter / 2
        want = min(radius * 0.7, float(depth.max()) * 0.8)
        candidates = np.flatnonzero(depth.ravel() >= want)
        if candidates.size == 0:
            continue
        centre_flat = candidates[int(rng.integers(candidates.size))]
        idx = np.unravel_index(centre_flat, liver.shape)
        centre = np.array([x[idx], y[idx], z[idx]], dtype=float)
        radii = radius * rng.uniform(0.8, 1.2, size=3)
        rotation = rotation_matrix(rng, 90)
        # Work in the tumour's bounding box (index space) only.
        reach = (radii.max() * 1.3) / vox_mm
        lo = np.maximum(np.floor(np.asarray(idx) - reach).astype(int), 0)
        hi = np.minimum(np.ceil(np.asarray(idx) + reach).astype(int) + 1, liver.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        bx, by, bz = x[box], y[box], z[box]
        level = ellipsoid_level(bx, by, bz, centre, radii, rotation)
        bumps = FourierField.random(rng, 5, (max(diameter * 0.4, 6.0), max(diameter * 1.2, 12.0)))
        level *= 1 + np.float32(0.12) * bumps(bx, by, bz)
        mask = (level < 1) & liver[box]
        if not mask.any():
            continue
        hyper = rng.uniform() < 0.35
        contrast = rng.uniform(30, 60) if hyper else -rng.uniform(30, 70)
        hetero = FourierField.random(rng, 5, (6, 25))(bx, by, bz) * np.float32(rng.uniform(4, 12))
        values = np.float32(tissue.liver + contrast) + hetero
        necrotic = bool(radius > 15 and rng.uniform() < 0.5)
        if necrotic:
            core = level < np.float32(rng.uniform(0.15, 0.45))
            values = np.where(core, np.float32(rng.uniform(5, 25)) + hetero * 0.5, values)
        image[box][mask] = values[mask]
        label[box][mask] = LABELS["tumor"]
        voxels = int(mask.sum())
        placed.append({
            "centre_mm": [round(float(c), 2) for c in centre],
            "diameter_mm": round(float(2 * radii.max()), 2),
            "volume_ml": round(voxels * float(np.prod(vox_mm)) / 1000.0, 3),
            "contrast_hu": round(float(contrast), 1),
            "necrotic_core": necrotic,
        })
    return placed
