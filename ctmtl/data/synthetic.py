"""Synthetic chest CT written in the on-disk layouts of the three real data sets, so the real builders read it.

``generate_synthetic(out, seed)`` writes::

    OUT/medseg/                 tr_im/tr_mask.nii.gz (slices of several patients, stacked), val_im.nii.gz (no mask),
                                rp_im/<N>.nii.gz + rp_msk/<N>.nii.gz + rp_lung_msk/<N>.nii.gz; int16 HU, masks uint8
                                1 ground-glass, 2 consolidation, 3 pleural effusion; slices stored transposed as
                                MedSeg's are (upright = ``np.fliplr(np.rot90(s, k=3))`` = ``s.T``)
    OUT/ucsd-ai4h-covid-ct/     Images-processed/CT_COVID/*.png, CT_NonCOVID/*.{png,jpg}, Data-split/...,
                                NonCOVID-CT-MetaInfo.csv; 8-bit screenshots of single slices: varied sizes and
                                crops, modes L/RGB/RGBA, some .png holding JPEG data, '%' in names
    OUT/lung-pet-ct-dx/         manifest-<n>/metadata.csv + manifest-<n>/Lung-PET-CT-Dx/Lung_Dx-<ID>/<study>/<series>/1-NN.dcm
                                (NBIA layout; one patient in the older Lung_Dx-<ID>/<StudyUID>/<SeriesUID>/ layout),
                                uint16 CT with RescaleIntercept -1024, InstanceNumber descending with position,
                                UIDs from pydicom.uid.generate_uid (deterministic per seed), solid nodules/masses
                                with Annotation/<ID>/<SOPInstanceUID>.xml per annotated slice; one study's
                                annotations spread over two series; a CT series without annotations and a PET
                                series, which the builder leaves out; a series folder name with double spaces
    OUT/synth.json              what was written and the counts the builders' manifests must show

The phantom (one per patient, parametric in millimetres so any slice position can be rendered): body with fat
and muscle, ribs, spine, aorta, heart and liver cutting the lungs at the base, lungs (denser posteriorly),
trachea and bronchi, branching vessels with partial volume; slice thickness by averaging three positions
across the slab; in-plane blur and noise. Lesions: peripheral, mostly posterior ground-glass blobs (irregular,
with crazy-paving texture, HU about -750 to -350), consolidation cores (-150 to +50 HU, the range of vessels),
dependent pleural effusion (0-25 HU, the range of the chest wall), solid nodules and masses (0-60 HU)
juxtapleural, perihilar among the vessels or in the parenchyma, calcified granulomas that are not annotated,
and, in non-COVID slices, look-alikes (dependent atelectasis, emphysema, small nodules, small effusions).
No single HU threshold separates lesion from non-lesion.

Geometry conventions of the rendered arrays: row = anterior -> posterior, column = patient right -> left
(radiological display), slice index = inferior -> superior.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from ctmtl.constants import MANIFEST_FORMAT, SCALES, SPLITS, TASKS
from ctmtl.data.sources.common import (
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    block_splits,
    split_patients,
)
from ctmtl.errors import CtmtlError, DataError

__all__ = [
    "SynthConfig",
    "generate_synthetic",
    "build_synthetic_manifests",
    "ensure_synthetic",
    "SYNTH_FORMAT",
    "SOURCE_DIRS",
    "MANIFEST_FILES",
]

SYNTH_FORMAT = "ctmtl-synth/1"
#: source name -> folder under OUT
SOURCE_DIRS: dict[str, str] = {"medseg": "medseg", "ucsd-ai4h": "ucsd-ai4h-covid-ct", "lung-pet-ct-dx": "lung-pet-ct-dx"}
#: manifest key -> file under OUT/manifests
MANIFEST_FILES: dict[str, str] = {
    "medseg": "medseg.json",
    "ucsd-ai4h": "ucsd-ai4h.json",
    "lung-pet-ct-dx": "lung-pet-ct-dx.json",
    "merged": "merged.json",
}

_R = 160.0  # mm: half-width scale of the phantom's body
_FOV = 340.0  # mm: in-plane field of view of the rendered image


@dataclass(frozen=True)
class SynthConfig:
    """Sizes of the synthetic data set.

    Attributes:
        size: in-plane pixels of volumes and DICOM slices (UCSD screenshots are 0.6-1.6 times this).
        slices: slices per volume / series.
        thickness: slice thickness and spacing (mm).
        medseg_volumes: ``rp_im`` volumes (one patient each).
        medseg_tr_patients, medseg_tr_slices: patients stacked in ``tr_im`` and slices taken from each.
        medseg_val_slices: slices of ``val_im`` (no mask).
        lung_dx_patients: Lung-PET-CT-Dx patients (one annotated CT series each; one patient has two).
        ucsd_covid, ucsd_noncovid: UCSD-AI4H images per class.
    """

    size: int = 128
    slices: int = 20
    thickness: float = 5.0
    medseg_volumes: int = 8
    medseg_tr_patients: int = 8
    medseg_tr_slices: int = 4
    medseg_val_slices: int = 6
    lung_dx_patients: int = 8
    ucsd_covid: int = 64
    ucsd_noncovid: int = 64

    @classmethod
    def preset(cls, scale: str = "small", size: int | None = None) -> SynthConfig:
        """``small`` (the default: trains in minutes on 2 CPU cores), ``medium`` (``small`` with 480 UCSD-AI4H-style
        images instead of 128, about two thirds of the real set's 746: the covid-19 / non-covid classification needs
        that many to be learnt: ``ctmtl demo --scale medium``) or ``large``; ``size`` overrides the in-plane size."""
        if scale == "small":
            cfg = cls()
        elif scale == "medium":
            cfg = cls(ucsd_covid=240, ucsd_noncovid=240)
        elif scale == "large":
            cfg = cls(size=256, slices=40, thickness=2.5, medseg_volumes=16, medseg_tr_patients=25, medseg_tr_slices=4,
                      medseg_val_slices=10, lung_dx_patients=24, ucsd_covid=240, ucsd_noncovid=240)
        else:
            raise DataError(f"--scale {scale!r}: expected one of {', '.join(SCALES)}")
        if size is not None:
            cfg = replace(cfg, size=int(size))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.size < 16:
            raise DataError(f"synthetic size {self.size}: expected at least 16 pixels")
        if self.slices < 2:
            raise DataError(f"synthetic slices {self.slices}: expected at least 2")
        if min(self.medseg_volumes, self.lung_dx_patients, self.ucsd_covid, self.ucsd_noncovid, self.medseg_tr_patients) < 1:
            raise DataError("synthetic counts must be at least 1 for every source")


# ---------------------------------------------------------------------------------------------- geometry


class _Grid:
    """Pixel centres in mm: ``x`` (columns, + = patient left) and ``y`` (rows, + = posterior), ``(H, W)``."""

    def __init__(self, size: int, fov: float = _FOV):
        self.size = size
        self.fov = fov
        self.px = fov / size
        c = (np.arange(size) + 0.5) * self.px - fov / 2
        self.y, self.x = np.meshgrid(c, c, indexing="ij")

    def pixel(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, column) indices nearest to points in mm."""
        row = np.floor((y + self.fov / 2) / self.px).astype(int)
        col = np.floor((x + self.fov / 2) / self.px).astype(int)
        return row, col


@dataclass
class _Blob:
    """An irregular ellipsoid: inside where ``sum(((p - c) / r)^2) + sum(amp sin(k . (p - c) + phase)) < 1``."""

    kind: str  # ggo, consolidation, atelectasis, emphysema, nodule, calcified
    c: np.ndarray
    r: np.ndarray
    k: np.ndarray
    phase: np.ndarray
    amp: np.ndarray
    hu: float  # target HU (ggo: HU added)
    texture: float = 0.0
    tex_k: np.ndarray = field(default_factory=lambda: np.zeros(3))
    ident: int = 0

    def field(self, grid: _Grid, z: float) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """``(window, f)``: the pixel window that can hold the blob at height ``z`` and the implicit function
        on it (inside where ``f < 1``); ``None`` when the blob does not reach ``z``."""
        dz = z - self.c[2]
        reach = math.sqrt(1.0 + float(np.sum(np.abs(self.amp))))
        if abs(dz) > self.r[2] * reach:
            return None
        ex, ey = self.r[0] * reach + grid.px, self.r[1] * reach + grid.px
        (r0, r1), (c0, c1) = (np.clip(v, 0, grid.size) for v in grid.pixel(np.array([self.c[0] - ex, self.c[0] + ex]),
                                                                         np.array([self.c[1] - ey, self.c[1] + ey])))
        if r1 + 1 <= r0 or c1 + 1 <= c0 or r0 >= grid.size or c0 >= grid.size:
            return None
        win = (slice(int(r0), int(min(r1 + 1, grid.size))), slice(int(c0), int(min(c1 + 1, grid.size))))
        dx, dy = grid.x[win] - self.c[0], grid.y[win] - self.c[1]
        f = (dx / self.r[0]) ** 2 + (dy / self.r[1]) ** 2 + (dz / self.r[2]) ** 2
        for k, ph, a in zip(self.k, self.phase, self.amp):
            f = f + a * np.sin(k[0] * dx + k[1] * dy + (k[2] * dz + ph))
        return win, f


def _blob(rng, kind, c, r, hu, irregular=(0.1, 0.3), wavelength=(15.0, 40.0), waves=4, texture=0.0, ident=0) -> _Blob:
    k = rng.normal(size=(waves, 3))
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    k *= (2 * np.pi / rng.uniform(*wavelength, size=waves))[:, None]
    tk = rng.normal(size=3)
    tk = tk / np.linalg.norm(tk) * 2 * np.pi / rng.uniform(8.0, 16.0)
    return _Blob(kind, np.asarray(c, float), np.asarray(r, float), k, rng.uniform(0, 2 * np.pi, waves),
                 rng.uniform(*irregular, size=waves) / waves * 2, float(hu), texture, tk, ident)


@dataclass
class _Effusion:
    side: int  # 0 right, 1 left
    height: float  # mm at the base
    hu: float


@dataclass
class _Anatomy:
    """One patient's phantom. ``z`` runs 0 (inferior) .. ``z_extent`` mm (superior)."""

    z_extent: float
    body: tuple[float, float, float, float]
    fat: float
    lungs: list[tuple[float, float, float, float]]
    lung_hu: float
    heart_r: float
    noise: float
    vessel_hu: float
    rib_phase: float
    vessel_pts: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    vessel_r: np.ndarray = field(default_factory=lambda: np.zeros(0))
    blobs: list[_Blob] = field(default_factory=list)
    effusions: list[_Effusion] = field(default_factory=list)

    def lung_scale(self, z: float) -> float:
        zf = z / self.z_extent
        return 0.6 + 0.4 * math.sin(math.pi * (0.15 + 0.75 * min(max(zf, 0.0), 1.0)))

    def lung_point(self, side: int, z: float, radial: float, angle: float) -> tuple[float, float]:
        cx, cy, ax, ay = self.lungs[side]
        s = self.lung_scale(z)
        return cx + s * ax * radial * math.cos(angle), cy + s * ay * radial * math.sin(angle)


def _anatomy(rng: np.random.Generator, z_extent: float) -> _Anatomy:
    body = (rng.normal(0, 3), 8 + rng.normal(0, 3), _R * rng.uniform(0.84, 0.93), _R * rng.uniform(0.58, 0.66))
    lungs = []
    for side in (-1, 1):  # patient right (display left, x < 0), then left
        lungs.append((side * _R * rng.uniform(0.39, 0.43) + body[0], body[1] - 10 + rng.normal(0, 2),
                      _R * rng.uniform(0.26, 0.30), body[3] * rng.uniform(0.68, 0.74)))
    anat = _Anatomy(z_extent=z_extent, body=body, fat=rng.uniform(0.04, 0.09), lungs=lungs, lung_hu=rng.uniform(-880, -830),
                    heart_r=_R * rng.uniform(0.2, 0.25), noise=rng.uniform(10, 30), vessel_hu=rng.uniform(25, 60),
                    rib_phase=rng.uniform(0, 2 * np.pi))
    _add_vessels(rng, anat)
    return anat


def _bezier(p0, p1, p2, step):
    length = np.linalg.norm(p1 - p0) + np.linalg.norm(p2 - p1)
    t = np.linspace(0, 1, max(2, int(length / step) + 1))[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2, t[:, 0]


def _add_vessels(rng, anat: _Anatomy, step: float = 0.8) -> None:
    pts, radii = [], []
    zh = 0.55 * anat.z_extent
    for side in (0, 1):
        cx, cy, ax, _ = anat.lungs[side]
        hilum = np.array([cx + (ax * 0.55 if side == 0 else -ax * 0.55), cy + rng.normal(0, 5), zh])
        for _ in range(int(rng.integers(6, 9))):
            z_end = rng.uniform(0.05, 0.95) * anat.z_extent
            end = np.array([*anat.lung_point(side, z_end, rng.uniform(0.5, 0.95), rng.uniform(0, 2 * np.pi)), z_end])
            ctrl = (hilum + end) / 2 + rng.normal(0, 12, 3)
            line, t = _bezier(hilum, ctrl, end, step)
            r0 = rng.uniform(2.5, 4.5)
            r = r0 * (1 - 0.7 * t)
            pts.append(line)
            radii.append(r)
            for _ in range(2):  # branches from a random point of the parent
                i = int(rng.integers(len(line) // 4, max(len(line) // 4 + 1, 3 * len(line) // 4)))
                zb = rng.uniform(0.05, 0.95) * anat.z_extent
                bend = np.array([*anat.lung_point(side, zb, rng.uniform(0.4, 0.95), rng.uniform(0, 2 * np.pi)), zb])
                bline, bt = _bezier(line[i], (line[i] + bend) / 2 + rng.normal(0, 8, 3), bend, step)
                pts.append(bline)
                radii.append(r[i] * 0.75 * (1 - 0.6 * bt))
    anat.vessel_pts = np.concatenate(pts)
    anat.vessel_r = np.concatenate(radii)


# -------------------------------------------------------------------------------------------- rendering


def _ellipse(grid: _Grid, cx, cy, ax, ay) -> np.ndarray:
    return ((grid.x - cx) / ax) ** 2 + ((grid.y - cy) / ay) ** 2


def _lung_masks(anat: _Anatomy, grid: _Grid, z: float) -> tuple[np.ndarray, np.ndarray]:
    """``(side, e)``: int8 ``(H, W)`` 0 outside, 1 right lung, 2 left lung; and each pixel's normalised radius²
    in its lung's ellipse."""
    zf = z / anat.z_extent
    s = anat.lung_scale(z)
    side = np.zeros(grid.x.shape, np.int8)
    e_all = np.full(grid.x.shape, np.inf)
    for i, (cx, cy, ax, ay) in enumerate(anat.lungs):
        e = _ellipse(grid, cx, cy, ax * s, ay * s)
        inside = e < 1
        side[inside] = i + 1
        e_all = np.where(inside, e, e_all)
    bx, by = anat.body[0], anat.body[1]
    if zf < 0.62:  # heart, to the patient's left and anterior
        r = anat.heart_r * min(1.0, (0.62 - zf) / 0.25 + 0.35)
        side[_ellipse(grid, bx + 0.14 * _R, by - 0.1 * _R, r, r * 0.9) < 1] = 0
    if zf < 0.32:  # liver dome under the right lung
        cx, cy, ax, ay = anat.lungs[0]
        r = ax * 1.6 * (0.32 - zf) / 0.32 + 1e-3
        side[(_ellipse(grid, cx, cy + 0.2 * ay, r, r * 1.2) < 1) & (side == 1)] = 0
    side[_ellipse(grid, bx, by + 0.62 * anat.body[3], 24, 24) < 1] = 0  # never over the spine
    return side, e_all


def _vessel_field(anat: _Anatomy, grid: _Grid, z: float) -> np.ndarray:
    """Vessel occupancy in [0, 1] ``(H, W)``: union of the spheres along the centre lines cut at ``z``."""
    dz = anat.vessel_pts[:, 2] - z
    hit = np.abs(dz) < anat.vessel_r
    if not np.any(hit):
        return np.zeros(grid.x.shape, np.float32)
    rin = np.sqrt(anat.vessel_r[hit] ** 2 - dz[hit] ** 2)
    row, col = grid.pixel(anat.vessel_pts[hit, 0], anat.vessel_pts[hit, 1])
    ok = (row >= 0) & (row < grid.size) & (col >= 0) & (col < grid.size)
    seeds = np.zeros(grid.x.shape, np.float64)
    np.maximum.at(seeds, (row[ok], col[ok]), rin[ok] / grid.px)
    if not np.any(seeds):
        return np.zeros(grid.x.shape, np.float32)
    dist, (ri, ci) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    return np.clip(seeds[ri, ci] - dist + 0.5, 0, 1).astype(np.float32)


def _hu_at(anat: _Anatomy, grid: _Grid, z: float, labels: bool):
    """HU image at one position, and (when ``labels``) lesion labels, lung sides and nodule ids."""
    bx, by, bax, bay = anat.body
    hu = np.full(grid.x.shape, -1000.0)
    eb = _ellipse(grid, bx, by, bax, bay)
    hu[eb < 1] = -100.0
    hu[eb < (1 - anat.fat) ** 2] = 40.0
    rb = np.sqrt(eb)
    angle = np.arctan2(grid.y - by, grid.x - bx)
    ribs = (rb > 0.86) & (rb < 0.91) & (np.sin(9 * angle + anat.rib_phase + 2 * np.pi * z / 40.0) > 0.55)
    hu[ribs] = 650.0
    vy = by + 0.62 * bay
    hu[_ellipse(grid, bx, vy, 22, 20) < 1] = 700.0
    hu[_ellipse(grid, bx, vy, 18, 16) < 1] = 250.0
    hu[_ellipse(grid, bx, vy + 28, 8, 8) < 1] = 20.0
    hu[_ellipse(grid, bx + 24, vy - 32, 12, 12) < 1] = 45.0  # descending aorta
    side, e = _lung_masks(anat, grid, z)
    lung = side > 0
    cy = np.where(side == 2, anat.lungs[1][1], anat.lungs[0][1])
    hu[lung] = anat.lung_hu + 45.0 * ((grid.y - cy) / (anat.lungs[0][3]))[lung]
    zf = z / anat.z_extent
    if zf > 0.62:  # trachea
        ring = _ellipse(grid, bx, by - 12, 11, 10)
        hu[ring < 1] = 40.0
        hu[_ellipse(grid, bx, by - 12, 8.5, 7.5) < 1] = -990.0
    elif zf > 0.45:  # main bronchi
        off = 8 + (0.62 - zf) / 0.17 * 40
        for sx in (-1, 1):
            hu[_ellipse(grid, bx + sx * off, by - 8, 7, 6) < 1] = 40.0
            hu[_ellipse(grid, bx + sx * off, by - 8, 5, 4) < 1] = -990.0
    v = _vessel_field(anat, grid, z) * lung
    hu = hu * (1 - v) + anat.vessel_hu * v
    label = np.zeros(grid.x.shape, np.uint8) if labels else None
    nodules = np.zeros(grid.x.shape, np.int16) if labels else None
    order = {"emphysema": 0, "ggo": 1, "atelectasis": 2, "consolidation": 3, "nodule": 4, "calcified": 5}
    for blob in sorted(anat.blobs, key=lambda b: order[b.kind]):
        found = blob.field(grid, z)
        if found is None:
            continue
        win, f = found
        m = np.clip((1 - f) / 0.15, 0, 1)
        inside = f < 1
        if blob.kind in ("ggo", "consolidation", "atelectasis", "emphysema"):
            m = m * lung[win]
            inside = inside & lung[win]
        if not np.any(m):
            continue
        if blob.kind == "ggo":
            tex = blob.texture * np.sin(blob.tex_k[0] * grid.x[win] + blob.tex_k[1] * grid.y[win] + blob.tex_k[2] * z)
            hu[win] += m * (blob.hu + tex)
            if labels:
                lab = label[win]
                lab[inside & (lab == 0)] = 1
        else:
            hu[win] = hu[win] * (1 - m) + blob.hu * m
            if labels and blob.kind == "consolidation":
                label[win][inside] = 2
            if labels and blob.kind == "nodule":
                nod = nodules[win]
                nod[inside & (nod == 0)] = blob.ident
    for eff in anat.effusions:
        cx, cy, ax, ay = anat.lungs[eff.side]
        s = anat.lung_scale(z)
        h = eff.height * max(0.0, 1 - zf / 0.75) ** 1.2
        if h <= 0:
            continue
        u = np.clip((grid.x - cx) / (ax * s), -1, 1)
        posterior = cy + ay * s * np.sqrt(1 - u**2)
        region = (side == eff.side + 1) & (grid.y > posterior - h * (1 + 0.5 * u**2))
        hu[region] = eff.hu
        if labels:
            label[region] = 3
    return hu, label, side, nodules


def _render(anat: _Anatomy, grid: _Grid, z: float, thickness: float, rng: np.random.Generator):
    """One slice: ``hu`` float32 ``(H, W)`` (slab-averaged, blurred, noisy), ``label`` uint8, lung ``side``
    int8, ``nodules`` int16 (ids), the label maps taken at the slab centre."""
    acc = None
    centre = None
    for dz in (-thickness / 3, 0.0, thickness / 3):
        hu, label, side, nodules = _hu_at(anat, grid, z + dz, labels=dz == 0.0)
        acc = hu if acc is None else acc + hu
        if dz == 0.0:
            centre = (label, side, nodules)
    hu = ndimage.gaussian_filter(acc / 3, 0.5)
    noise = ndimage.gaussian_filter(rng.normal(0, anat.noise * 1.8, hu.shape), 0.6)
    return (hu + noise).astype(np.float32), *centre


# ------------------------------------------------------------------------------------------- lesions


def _lesion_site(rng, anat: _Anatomy, z: float, radial=(0.55, 0.95), posterior_bias=0.6):
    side = int(rng.integers(0, 2))
    angle = rng.uniform(0.15 * np.pi, 0.85 * np.pi) if rng.random() < posterior_bias else rng.uniform(0, 2 * np.pi)
    return side, anat.lung_point(side, z, rng.uniform(*radial), angle)


def _add_covid(rng, anat: _Anatomy, n_ggo: int, z_range: tuple[float, float], effusion_p: float = 0.3) -> None:
    """Peripheral ground-glass blobs, consolidation cores (and alone), sometimes a dependent effusion."""
    for _ in range(n_ggo):
        z = rng.uniform(*z_range)
        _, (x, y) = _lesion_site(rng, anat, z)
        r = np.array([rng.uniform(12, 35), rng.uniform(12, 35), rng.uniform(8, 25)])
        anat.blobs.append(_blob(rng, "ggo", (x, y, z), r, rng.uniform(100, 480), texture=rng.uniform(0, 60)))
        if rng.random() < 0.55:
            c = np.array([x, y, z]) + rng.normal(0, 4, 3)
            anat.blobs.append(_blob(rng, "consolidation", c, r * rng.uniform(0.3, 0.6, 3), rng.uniform(-150, 50), irregular=(0.15, 0.4)))
    if rng.random() < 0.2:
        z = rng.uniform(z_range[0], (z_range[0] + z_range[1]) / 2)
        _, (x, y) = _lesion_site(rng, anat, z, posterior_bias=1.0)
        r = np.array([rng.uniform(8, 20), rng.uniform(6, 14), rng.uniform(6, 15)])
        anat.blobs.append(_blob(rng, "consolidation", (x, y, z), r, rng.uniform(-120, 50)))
    if rng.random() < effusion_p:
        for side in ([0, 1] if rng.random() < 0.4 else [int(rng.integers(0, 2))]):
            anat.effusions.append(_Effusion(side, rng.uniform(10, 28), rng.uniform(0, 25)))


def _add_lookalikes(rng, anat: _Anatomy, z_range: tuple[float, float], scale: float = 1.0) -> None:
    """Findings that are not COVID-19 lesions: atelectasis, emphysema, calcified granulomas, small effusion."""
    if rng.random() < 0.35 * scale:
        z = rng.uniform(*z_range)
        _, (x, y) = _lesion_site(rng, anat, z, radial=(0.8, 1.0), posterior_bias=1.0)
        anat.blobs.append(_blob(rng, "atelectasis", (x, y, z), (rng.uniform(15, 30), rng.uniform(3, 7), rng.uniform(5, 12)),
                                rng.uniform(-500, -150), irregular=(0.05, 0.15)))
    if rng.random() < 0.3 * scale:
        for _ in range(int(rng.integers(2, 6))):
            z = rng.uniform(*z_range)
            _, (x, y) = _lesion_site(rng, anat, z, radial=(0.1, 0.8), posterior_bias=0.0)
            anat.blobs.append(_blob(rng, "emphysema", (x, y, z), rng.uniform(4, 12, 3), rng.uniform(-990, -950)))
    for _ in range(int(rng.poisson(0.8 * scale))):
        z = rng.uniform(*z_range)
        _, (x, y) = _lesion_site(rng, anat, z, radial=(0.1, 0.9), posterior_bias=0.0)
        anat.blobs.append(_blob(rng, "calcified", (x, y, z), rng.uniform(1.5, 3.5, 3), rng.uniform(200, 600), irregular=(0.0, 0.05)))
    if rng.random() < 0.1 * scale:
        anat.effusions.append(_Effusion(int(rng.integers(0, 2)), rng.uniform(5, 12), rng.uniform(0, 20)))


def _add_nodules(rng, anat: _Anatomy, n: int, z_range: tuple[float, float]) -> None:
    """Solid nodules / masses: juxtapleural, perihilar (among the vessels) or in the parenchyma."""
    for i in range(n):
        z = rng.uniform(*z_range)
        mode = rng.choice(["juxtapleural", "perihilar", "parenchymal"])
        radial = {"juxtapleural": (0.85, 1.0), "perihilar": (0.1, 0.35), "parenchymal": (0.35, 0.8)}[mode]
        side, (x, y) = _lesion_site(rng, anat, z, radial=radial, posterior_bias=0.3)
        rr = rng.uniform(7, 22)
        r = np.array([rr * rng.uniform(0.8, 1.2), rr * rng.uniform(0.8, 1.2), rr * rng.uniform(0.7, 1.1)])
        anat.blobs.append(_blob(rng, "nodule", (x, y, z), r, rng.uniform(0, 60), irregular=(0.1, 0.35),
                                wavelength=(6.0, 20.0), waves=6, ident=i + 1))


# ---------------------------------------------------------------------------------------------- writers


def _patient_rng(seed: int, source: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, source, index])


def _render_volume(anat: _Anatomy, grid: _Grid, zs, thickness: float, rng):
    """Stack of slices: hu float32 ``(H, W, D)``, label uint8, lung side int8, nodules int16."""
    parts = [_render(anat, grid, float(z), thickness, rng) for z in zs]
    return tuple(np.stack([p[i] for p in parts], axis=-1) for i in range(4))


def _write_nifti(path: Path, array: np.ndarray, spacing: tuple[float, float, float], dtype) -> None:
    """Write a volume rendered as (row, column, slice) the way MedSeg stores it: each slice transposed (the
    NIfTI i axis is the image column), LPS-like affine (i -> patient left, j -> posterior, k -> superior)."""
    import nibabel as nib

    stored = np.ascontiguousarray(np.transpose(array, (1, 0, 2))).astype(dtype)
    affine = np.diag([-spacing[1], -spacing[0], spacing[2], 1.0])
    img = nib.Nifti1Image(stored, affine)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _hu_int16(hu: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _write_medseg(out: Path, seed: int, cfg: SynthConfig) -> dict:
    grid = _Grid(cfg.size)
    z_extent = cfg.slices * cfg.thickness
    zs = (np.arange(cfg.slices) + 0.5) * cfg.thickness
    spacing = (grid.px, grid.px, cfg.thickness)
    volumes = []
    # rp_im/N: one patient each
    for n in range(1, cfg.medseg_volumes + 1):
        rng = _patient_rng(seed, 1, n)
        anat = _anatomy(rng, z_extent)
        _add_covid(rng, anat, int(rng.integers(2, 5)), (0.15 * z_extent, 0.85 * z_extent))
        _add_lookalikes(rng, anat, (0, z_extent), scale=0.5)
        hu, label, side, _ = _render_volume(anat, grid, zs, cfg.thickness, rng)
        _write_nifti(out / "rp_im" / f"{n}.nii.gz", _hu_int16(hu), spacing, np.int16)
        _write_nifti(out / "rp_msk" / f"{n}.nii.gz", label, spacing, np.uint8)
        _write_nifti(out / "rp_lung_msk" / f"{n}.nii.gz", side.astype(np.uint8), spacing, np.uint8)
        volumes.append({"id": f"rp_im/{n}", "patient": f"medseg-rp{n}", "slices": cfg.slices,
                        "lesion_slices": _nonzero_slices(label), "labels": sorted(np.unique(label).tolist())})
    # tr_im: a few slices of several patients, stacked; val_im: the same without masks
    for name, patients, per, with_mask, src in (("tr", cfg.medseg_tr_patients, cfg.medseg_tr_slices, True, 2),
                                                ("val", max(1, math.ceil(cfg.medseg_val_slices / 3)), 3, False, 3)):
        his, labels = [], []
        for p in range(patients):
            rng = _patient_rng(seed, src, p)
            anat = _anatomy(rng, z_extent)
            _add_covid(rng, anat, int(rng.integers(2, 5)), (0.3 * z_extent, 0.7 * z_extent))
            start = rng.uniform(0.3, 0.7) * z_extent - per * cfg.thickness / 2
            hu, label, _, _ = _render_volume(anat, grid, start + np.arange(per) * cfg.thickness, cfg.thickness, rng)
            his.append(hu)
            labels.append(label)
        hu = np.concatenate(his, axis=-1)
        label = np.concatenate(labels, axis=-1)
        if name == "val":
            hu, label = hu[..., : cfg.medseg_val_slices], label[..., : cfg.medseg_val_slices]
        _write_nifti(out / f"{name}_im.nii.gz", _hu_int16(hu), spacing, np.int16)
        if with_mask:
            _write_nifti(out / f"{name}_mask.nii.gz", label, spacing, np.uint8)
        volumes.append({"id": f"{name}_im", "patient": None, "slices": hu.shape[-1],
                        "lesion_slices": _nonzero_slices(label) if with_mask else None,
                        "labels": sorted(np.unique(label).tolist()) if with_mask else None})
    return {"root": SOURCE_DIRS["medseg"], "volumes": volumes, "counts": _expected_medseg(volumes)}


def _nonzero_slices(label: np.ndarray) -> list[int]:
    return [int(k) for k in np.flatnonzero(np.any(label.reshape(-1, label.shape[-1]) > 0, axis=0))]


def _empty_counts() -> dict:
    return {"entries": 0, "splits": {s: {"entries": 0, "slices": 0, "lesion_slices": 0, "boxes": 0, "patients": 0} for s in SPLITS},
            "classes": {}, "tasks": {t: 0 for t in TASKS}}


def _tally(counts: dict, split: str, *, slices: int, lesion: int = 0, boxes: int = 0, klass: str | None = None, tasks=()) -> None:
    counts["entries"] += 1
    row = counts["splits"][split]
    row["entries"] += 1
    row["slices"] += slices
    row["lesion_slices"] += lesion
    row["boxes"] += boxes
    if klass:
        counts["classes"][klass] = counts["classes"].get(klass, 0) + 1
    for t in tasks:
        counts["tasks"][t] += 1


def _expected_medseg(volumes: list[dict], val_fraction=DEFAULT_VAL_FRACTION, test_fraction=DEFAULT_TEST_FRACTION) -> dict:
    """The counts the MedSeg builder must report at its default options (its documented conventions)."""
    counts = _empty_counts()
    rp = [v for v in volumes if v["patient"]]
    split_of = split_patients([v["patient"] for v in rp], 0, val_fraction, test_fraction)
    patients = {s: set() for s in SPLITS}
    seg = ("segmentation", "reconstruction", "detection")
    for v in volumes:
        if v["id"] == "tr_im":
            for split, block in block_splits(v["slices"], val_fraction, test_fraction).items():
                if len(block):
                    lesion = len([k for k in v["lesion_slices"] if k in block])
                    _tally(counts, split, slices=len(block), lesion=lesion, tasks=seg)
                    patients[split].add(f"tr_im-{split}")
        elif v["id"] == "val_im":
            _tally(counts, "train", slices=v["slices"], tasks=("reconstruction",))
            patients["train"].add("val_im")
        else:
            split = split_of[v["patient"]]
            _tally(counts, split, slices=v["slices"], lesion=len(v["lesion_slices"]), tasks=seg)
            patients[split].add(v["patient"])
    for s in SPLITS:
        counts["splits"][s]["patients"] = len(patients[s])
    return counts


# ---- UCSD-AI4H


def _screenshot(hu: np.ndarray, rng) -> np.ndarray:
    """An 8-bit 'figure crop' of a slice: random lung-ish window, crop around the body, resize, gamma."""
    from PIL import Image

    level, width = rng.uniform(-650, -450), rng.uniform(1200, 1700)
    img = np.clip((hu - (level - width / 2)) / width * 255.0, 0, 255)
    img = 255.0 * (img / 255.0) ** rng.uniform(0.8, 1.25)
    body = np.argwhere(hu > -500)
    (r0, c0), (r1, c1) = body.min(0), body.max(0) + 1
    n = hu.shape[0]
    m = (rng.uniform(-0.02, 0.12, 4) * n).astype(int)
    r0, c0, r1, c1 = r0 - m[0], c0 - m[1], r1 + m[2], c1 + m[3]
    pad = max(0, -r0, -c0, r1 - n, c1 - n)
    img = np.pad(img, pad, constant_values=0)[r0 + pad: r1 + pad, c0 + pad: c1 + pad]
    scale = rng.uniform(0.6, 1.6)
    h, w = img.shape
    size = (max(8, int(w * scale * rng.uniform(0.92, 1.08))), max(8, int(h * scale)))
    return np.asarray(Image.fromarray(img.astype(np.uint8)).resize(size, Image.BILINEAR))


def _save_2d(path: Path, gray: np.ndarray, how: str, rng) -> str:
    """Save with one of the real quirks; returns the PIL mode as decoded."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(gray)
    if how in ("png-RGB", "png-RGBA", "jpeg-in-png", "jpg-RGB"):
        rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
        if rng.random() < 0.15:  # a tint from the paper's rendering
            rgb *= np.array([1.0, rng.uniform(0.93, 1.0), rng.uniform(0.85, 1.0)])
        img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    if how == "png-RGBA":
        img = img.convert("RGBA")
    if how in ("jpeg-in-png", "jpg-L", "jpg-RGB"):
        img.save(path, format="JPEG", quality=int(rng.integers(80, 96)))
    else:
        img.save(path, format="PNG")
    return img.mode


def _write_ucsd(out: Path, seed: int, cfg: SynthConfig) -> dict:
    grid = _Grid(cfg.size)
    z_extent = 20 * 5.0
    images_root = out / "Images-processed"
    meta_rows = []
    split_lists: dict[tuple[str, str], list[str]] = {}
    counts = _empty_counts()
    patients = {s: set() for s in SPLITS}
    modes: dict[str, int] = {}
    jpeg_in_png = 0
    for cls_i, (folder, klass, sub, total) in enumerate((("CT_COVID", "covid-19", "COVID", cfg.ucsd_covid),
                                                         ("CT_NonCOVID", "non-covid", "NonCOVID", cfg.ucsd_noncovid))):
        rng_groups = _patient_rng(seed, 10 + cls_i, 0)
        groups = []  # (group id, [names])
        made = 0
        g = 0
        while made < total:
            n = min(int(rng_groups.integers(1, 5)), total - made)
            if folder == "CT_COVID":
                style = rng_groups.random()
                if style < 0.7:
                    gid = f"2020.{rng_groups.integers(1, 5):02d}.{rng_groups.integers(1, 29):02d}.2002{rng_groups.integers(1000, 9999)}"
                    page, fig = int(rng_groups.integers(1, 30)), int(rng_groups.integers(20, 160))
                    names = [f"{gid}-p{page}-{fig}" + (f"%{i}" if n > 1 else "") + ".png" for i in range(n)]
                elif style < 0.9:
                    gid = f"PIIS{rng_groups.integers(10**12, 10**13 - 1)}"
                    names = [f"{gid}%{i}.png" for i in range(n)]
                else:
                    gid = f"ehaa{rng_groups.integers(100, 999)}"
                    names = [f"{gid}-p0-{rng_groups.integers(10, 99)}%{i}.png" for i in range(n)]
                patient = gid
            else:
                gid = str(100 * g + int(rng_groups.integers(0, 100)))
                ext = ".jpg" if rng_groups.random() < 0.5 else ".png"
                names = [f"{gid}%{i}{ext}" for i in range(n)] if n > 1 else [f"{gid}{ext}"]
                patient = f"crawled_patient_{gid}"
            groups.append((patient, names))
            made += n
            g += 1
        # official-style split by group: ~55 / 15 / 30 % of the images
        order = rng_groups.permutation(len(groups))
        split_of_group = {}
        acc = 0
        for rank in order:
            frac = acc / total
            split_of_group[rank] = "test" if frac < 0.30 else "val" if frac < 0.45 else "train"
            acc += len(groups[rank][1])
        for gi, (patient, names) in enumerate(groups):
            rng = _patient_rng(seed, 12 + cls_i, gi)
            anat = _anatomy(rng, z_extent)
            split = split_of_group[gi]
            for name in names:
                z = rng.uniform(0.3, 0.75) * z_extent
                anat.blobs, anat.effusions = [], []
                if folder == "CT_COVID":
                    _add_covid(rng, anat, int(rng.integers(1, 4)), (z - 6, z + 6), effusion_p=0.15)
                    _add_lookalikes(rng, anat, (z - 10, z + 10), scale=0.3)
                else:
                    _add_lookalikes(rng, anat, (z - 10, z + 10), scale=1.0)
                hu, *_ = _render(anat, grid, z, 5.0, rng)
                gray = _screenshot(hu, rng)
                if folder == "CT_COVID":
                    how = rng.choice(["png-RGBA", "png-RGB", "jpeg-in-png"], p=[0.45, 0.4, 0.15])
                else:
                    how = ("jpg-L" if rng.random() < 0.5 else "jpg-RGB") if name.endswith(".jpg") else "png-RGB"
                mode = _save_2d(images_root / folder / name, gray, how, rng)
                modes[mode] = modes.get(mode, 0) + 1
                jpeg_in_png += how == "jpeg-in-png"
                split_lists.setdefault((sub, split), []).append(name)
                _tally(counts, split, slices=1, klass=klass, tasks=("classification", "reconstruction"))
                if folder == "CT_NonCOVID":
                    meta_rows.append((name, patient))
            patients[split].add(f"{klass}:{patient}")
    for s in SPLITS:
        counts["splits"][s]["patients"] = len(patients[s])
    for (sub, split), names in split_lists.items():
        path = out / "Data-split" / sub / f"{split}CT_{sub}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(names))  # no trailing newline, as the official files
    for sub in ("COVID", "NonCOVID"):
        for split in SPLITS:
            path = out / "Data-split" / sub / f"{split}CT_{sub}.txt"
            if not path.exists():
                path.write_text("")
    with open(out / "NonCOVID-CT-MetaInfo.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["", "image name", "patient id"])
        for i, (name, patient) in enumerate(meta_rows):
            writer.writerow([i, name, patient])
    return {"root": SOURCE_DIRS["ucsd-ai4h"], "images": cfg.ucsd_covid + cfg.ucsd_noncovid, "modes": dict(sorted(modes.items())),
            "jpeg_in_png": int(jpeg_in_png), "counts": counts}


# ---- Lung-PET-CT-Dx


def _dicom_slice(path: Path, pixels: np.ndarray, *, patient_id: str, study_uid: str, series_uid: str, sop_uid: str,
                 frame_uid: str, instance: int, position: tuple[float, float, float], spacing: float, thickness: float,
                 modality: str, series_number: int, series_description: str, study_date: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian, PositronEmissionTomographyImageStorage

    sop_class = CTImageStorage if modality == "CT" else PositronEmissionTomographyImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.StudyDate = study_date
    ds.Modality = modality
    ds.Manufacturer = "ctmtl-synthetic"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6g}" for v in position]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [f"{spacing:.6g}", f"{spacing:.6g}"]
    ds.SliceThickness = f"{thickness:.6g}"
    ds.SpacingBetweenSlices = f"{thickness:.6g}"
    ds.SliceLocation = f"{position[2]:.6g}"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12 if modality == "CT" else 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024 if modality == "CT" else 0
    ds.RescaleSlope = 1
    ds.RescaleType = "HU" if modality == "CT" else "US"
    ds.WindowCenter, ds.WindowWidth = -600, 1500
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


def _voc_xml(path: Path, width: int, height: int, objects: list[tuple[str, list[int]]]) -> None:
    objs = "".join(
        f"  <object>\n    <name>{name}</name>\n    <pose>Unspecified</pose>\n    <truncated>0</truncated>\n"
        f"    <Difficult>0</Difficult>\n    <bndbox>\n      <xmin>{b[0]}</xmin>\n      <ymin>{b[1]}</ymin>\n"
        f"      <xmax>{b[2]}</xmax>\n      <ymax>{b[3]}</ymax>\n    </bndbox>\n  </object>\n"
        for name, b in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '<annotation verified="no">\n  <folder>Unknow</folder>\n  <filename>Unknow</filename>\n  <path>Unknow</path>\n'
        "  <source>Unknow<database>Unknown</database>\n  </source>\n"
        f"  <size>\n    <width>{width}</width>\n    <height>{height}</height>\n    <depth>1</depth>\n  </size>\n"
        f"  <segmented>0</segmented>\n{objs}</annotation>"
    )


def _boxes_of(nodules: np.ndarray, min_pixels: int = 3) -> dict[int, list[tuple[int, list[int]]]]:
    """Per slice k, ``(nodule id, [xmin, ymin, xmax, ymax])`` with x = column, y = row, max exclusive."""
    out: dict[int, list] = {}
    for k in range(nodules.shape[-1]):
        for ident in sorted(set(np.unique(nodules[..., k]).tolist()) - {0}):
            rows, cols = np.nonzero(nodules[..., k] == ident)
            if len(rows) < min_pixels or rows.max() == rows.min() or cols.max() == cols.min():
                continue
            out.setdefault(k, []).append((ident, [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]))
    return out


def _write_lung_dx(out: Path, seed: int, cfg: SynthConfig) -> dict:
    from pydicom.uid import generate_uid

    def uid(*parts) -> str:
        return generate_uid(entropy_srcs=["ctmtl-synthetic", str(seed), *map(str, parts)])

    grid = _Grid(cfg.size)
    z_extent = cfg.slices * cfg.thickness
    zs = (np.arange(cfg.slices) + 0.5) * cfg.thickness
    nbia = out / f"manifest-{1675442780000 + seed % 10000}"
    collection = nbia / "Lung-PET-CT-Dx"
    letters = ["A", "A", "B", "A", "E", "A", "G", "A"]
    per_letter: dict[str, int] = {}
    meta_rows = []
    patients_out = []
    two_series = 1 if cfg.lung_dx_patients > 1 else -1
    older_layout = 2 if cfg.lung_dx_patients > 2 else -1
    for p in range(cfg.lung_dx_patients):
        rng = _patient_rng(seed, 20, p)
        letter = letters[p % len(letters)]
        per_letter[letter] = per_letter.get(letter, 0) + 1
        code = f"{letter}{per_letter[letter]:04d}"
        pid = f"Lung_Dx-{code}"
        anat = _anatomy(rng, z_extent)
        _add_nodules(rng, anat, 2 if rng.random() < 0.35 else 1, (0.2 * z_extent, 0.8 * z_extent))
        _add_lookalikes(rng, anat, (0, z_extent), scale=0.6)
        hu, _, _, nodules = _render_volume(anat, grid, zs, cfg.thickness, rng)
        boxes = _boxes_of(nodules)
        study_uid = uid(code, "study")
        month, day, year = (p % 12) + 1, (p % 27) + 1, 2007 + p % 10
        date = f"{month:02d}-{day:02d}-{year}"  # NBIA folder style; DICOM StudyDate is YYYYMMDD
        study_folder = f"{date}-NA-Chest-{int(rng.integers(10000, 99999))}"
        z0 = -float(rng.integers(100, 400))
        x0 = y0 = -grid.fov / 2 + grid.px / 2
        series_specs = [("5mm", 2, "CT", sorted(boxes))]
        if p == two_series:  # the study's annotations are spread over two series
            keys = sorted(boxes)
            series_specs = [("5mm", 2, "CT", keys[::2]), ("ThoraxRoutine  8.0.0  B70f", 3, "CT", keys[1::2])]
        if p % 4 == 3:
            series_specs.append(("Lung 1.25mm recon", 4, "CT", []))  # CT series without annotations: left out
        if p % 4 == 0:
            series_specs.append(("PET WB", 5, "PT", []))  # PET: left out
        entries = []
        for desc, number, modality, annotated in series_specs:
            series_uid = uid(code, "series", number)
            if p == older_layout:
                folder = out / pid / study_uid / series_uid
            else:
                folder = collection / pid / study_folder / f"{number}.000000-{desc}-{int(rng.integers(10000, 99999))}"
            frame_uid = uid(code, "frame")
            if modality == "CT":
                pixels = np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16)
            else:  # a crude PET: uptake in the nodules and the heart region
                pixels = np.clip(np.rint(np.where(nodules > 0, 3000, 200) + ndimage.gaussian_filter(rng.normal(0, 50, hu.shape), 1)), 0, 65535).astype(np.uint16)
            sops = []
            for k in range(cfg.slices):
                instance = cfg.slices - k  # instance 1 is the top slice, as in the real series
                sop = uid(code, "sop", number, k)
                sops.append(sop)
                _dicom_slice(folder / f"1-{instance:02d}.dcm", pixels[..., k], patient_id=pid, study_uid=study_uid,
                             series_uid=series_uid, sop_uid=sop, frame_uid=frame_uid, instance=instance,
                             position=(x0, y0, z0 + k * cfg.thickness), spacing=grid.px, thickness=cfg.thickness,
                             modality=modality, series_number=number, series_description=desc.strip(), study_date=f"{year}{month:02d}{day:02d}")
            n_boxes = 0
            for k in annotated:
                objects = [(letter, b) for _, b in boxes[k]]
                _voc_xml(out / "Annotation" / code / f"{sops[k]}.xml", cfg.size, cfg.size, objects)
                n_boxes += len(objects)
            if p != older_layout:
                meta_rows.append([series_uid, "Lung-PET-CT-Dx", "null", "https://doi.org/10.7937/TCIA.2020.NNC20461", pid, study_uid,
                                  "Chest", date, desc, "ctmtl-synthetic", modality,
                                  "CT Image Storage" if modality == "CT" else "Positron Emission Tomography Image Storage",
                                  "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.128",
                                  cfg.slices, f"{cfg.slices * cfg.size * cfg.size * 2 / 1e6:.2f} MB",
                                  "./" + folder.relative_to(nbia).as_posix(), "2023-02-03T23:47:38.712"])
            if annotated:
                entries.append({"series": series_uid, "slices": list(annotated), "boxes": n_boxes})
        patients_out.append({"id": code, "layout": "older" if p == older_layout else "nbia", "entries": entries,
                             "nodules": int(max(b.ident for b in anat.blobs if b.kind == "nodule")),
                             "series": len(series_specs)})
    header = ["Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID", "Study UID", "Study Description",
              "Study Date", "Series Description", "Manufacturer", "Modality", "SOP Class Name", "SOP Class UID", "Number of Images",
              "File Size", "File Location", "Download Timestamp"]
    nbia.mkdir(parents=True, exist_ok=True)
    with open(nbia / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(meta_rows)
    return {"root": SOURCE_DIRS["lung-pet-ct-dx"], "patients": patients_out, "counts": _expected_lung_dx(patients_out)}


def _expected_lung_dx(patients: list[dict], val_fraction=DEFAULT_VAL_FRACTION, test_fraction=DEFAULT_TEST_FRACTION) -> dict:
    counts = _empty_counts()
    annotated = [p for p in patients if p["entries"]]
    split_of = split_patients([p["id"] for p in annotated], 0, val_fraction, test_fraction)
    members = {s: set() for s in SPLITS}
    for p in annotated:
        split = split_of[p["id"]]
        members[split].add(p["id"])
        for e in p["entries"]:
            _tally(counts, split, slices=len(e["slices"]), boxes=e["boxes"], klass="cancer",
                   tasks=("classification", "reconstruction", "detection"))
    for s in SPLITS:
        counts["splits"][s]["patients"] = len(members[s])
    return counts


# ------------------------------------------------------------------------------------------- top level


_WRITERS = {"medseg": _write_medseg, "ucsd-ai4h": _write_ucsd, "lung-pet-ct-dx": _write_lung_dx}


def _merged_counts(parts: list[dict]) -> dict:
    counts = _empty_counts()
    for c in parts:
        counts["entries"] += c["entries"]
        for s in SPLITS:
            for k, v in c["splits"][s].items():
                counts["splits"][s][k] += v
        for k, v in c["classes"].items():
            counts["classes"][k] = counts["classes"].get(k, 0) + v
        for t in TASKS:
            counts["tasks"][t] += c["tasks"][t]
    return counts


def _owned_paths(out: Path) -> list[Path]:
    return [out / d for d in SOURCE_DIRS.values()] + [out / "manifests", out / "synth.json"]


def generate_synthetic(out: str | Path, seed: int = 0, config: SynthConfig | None = None, overwrite: bool = False) -> dict:
    """Write the synthetic data set under ``out`` (see the module docstring) and return ``synth.json``'s content.

    Args:
        out: output folder (created).
        seed: every array, name and UID follows from it: the same seed gives the same files.
        config: sizes (default :meth:`SynthConfig.preset` ``"small"``).
        overwrite: replace what an earlier run wrote in ``out`` (only the folders it writes).

    Returns:
        the record also written to ``out/synth.json``: format, seed, config, seconds, and per source its
        ``root`` folder, what was written and ``counts``, the :meth:`Manifest.counts` its builder must report
        at default options; ``merged`` counts too.

    Raises:
        DataError: ``out`` already holds a synthetic data set (or any of the folders it writes) and
            ``overwrite`` is False.
    """
    out = Path(out)
    config = config or SynthConfig.preset("small")
    config.validate()
    existing = [p for p in _owned_paths(out) if p.exists()]
    if existing and not overwrite:
        raise DataError(f"{existing[0]}: exists (use --overwrite to replace the synthetic data in {out})")
    for p in existing:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    record: dict = {"format": SYNTH_FORMAT, "seed": int(seed), "config": asdict(config), "manifest_format": MANIFEST_FORMAT,
                    "build_options": {"split_seed": 0, "val_fraction": DEFAULT_VAL_FRACTION, "test_fraction": DEFAULT_TEST_FRACTION},
                    "sources": {}}
    for name, writer in _WRITERS.items():
        record["sources"][name] = writer(out / SOURCE_DIRS[name], int(seed), config)
    record["sources"]["merged"] = {"counts": _merged_counts([record["sources"][n]["counts"] for n in _WRITERS])}
    record["seconds"] = round(time.perf_counter() - start, 2)
    (out / "synth.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def build_synthetic_manifests(out: str | Path, manifest_dir: str | Path | None = None, overwrite: bool = False,
                              created_by: str = "") -> dict[str, Path]:
    """Build the three sources' manifests and the merged one for a synthetic data set at ``out``.

    Manifests are named ``synthetic-<source>`` (merged: ``synthetic``) and written to ``out/manifests/``
    (or ``manifest_dir``) with the builders' default options.

    Returns:
        ``{"medseg": path, "ucsd-ai4h": path, "lung-pet-ct-dx": path, "merged": path}``.

    Raises:
        DataError: ``out`` has no ``synth.json`` (not a synthetic data set).
        ManifestError: a manifest exists and ``overwrite`` is False.
    """
    from ctmtl.data.merge import merge_manifests
    from ctmtl.data.sources import BuildOptions, build_manifest

    out = Path(out)
    if not (out / "synth.json").is_file():
        raise DataError(f"{out}: no synth.json here; generate the data first with `ctmtl synth {out}`")
    manifest_dir = Path(manifest_dir) if manifest_dir is not None else out / "manifests"
    paths = {key: manifest_dir / name for key, name in MANIFEST_FILES.items()}
    if not overwrite:
        existing = [p for p in paths.values() if p.exists()]
        if existing:
            from ctmtl.errors import ManifestError

            raise ManifestError(f"manifest {existing[0]}: exists (use --overwrite to replace it)")
    for source, folder in SOURCE_DIRS.items():
        options = BuildOptions(name=f"synthetic-{source}", created_by=created_by or f"ctmtl manifest build synthetic {out}")
        build_manifest(source, out / folder, paths[source], options, overwrite=overwrite)
    merge_manifests([paths[s] for s in SOURCE_DIRS], paths["merged"], name="synthetic", overwrite=overwrite,
                    created_by=created_by or f"ctmtl manifest build synthetic {out}")
    return paths


def ensure_synthetic(out_dir: str | Path, seed: int = 0, scale: str = "small") -> dict[str, Path]:
    """The synthetic data set's manifests, generating the data and building them when missing.

    Reuses ``out_dir`` when its ``synth.json`` has the same seed and scale and every manifest loads; rebuilds
    missing manifests; generates the data when there is none. Generation goes to a temporary sibling folder
    renamed into place, so two processes calling this at once do not see half-written data.

    Returns:
        ``{"medseg", "ucsd-ai4h", "lung-pet-ct-dx", "merged"} -> manifest path``.

    Raises:
        DataError: ``out_dir`` holds a synthetic data set of another seed or scale, or other files.
    """
    from ctmtl.data.manifest import load_manifest

    out = Path(out_dir)
    config = SynthConfig.preset(scale)
    paths = {key: out / "manifests" / name for key, name in MANIFEST_FILES.items()}
    record_path = out / "synth.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("format") != SYNTH_FORMAT or record.get("seed") != seed or record.get("config") != asdict(config):
            raise DataError(f"{out}: holds synthetic data of another seed or scale (synth.json: seed {record.get('seed')}); "
                            f"choose another folder or regenerate with `ctmtl synth {out} --seed {seed} --scale {scale} --overwrite`")
        try:
            for p in paths.values():
                load_manifest(p)
            return paths
        except CtmtlError:
            return build_synthetic_manifests(out, overwrite=True)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: exists and is not a synthetic data set (no synth.json); choose an empty folder")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    generate_synthetic(tmp, seed, config)
    build_synthetic_manifests(tmp, created_by=f"ctmtl manifest build synthetic {out}")
    try:
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not record_path.is_file():  # nobody else finished either
            raise
    return paths
