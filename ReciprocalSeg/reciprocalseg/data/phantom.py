"""Procedural MRI-like phantoms: a cohort for the demo and fast tests, with no patient data.

Each volume holds an organ-like target (an ellipsoid with random size, position and
orientation, deformed by a smooth random displacement field) surrounded by a thin dark
wall; for K > 1 classes, further blobs adjacent to it are labelled 2..K. The background
has textured tissue inside a body outline and *distractors* (smaller blobs and vessel-like
tubes) 10-30 % darker or brighter than the target, then a smooth multiplicative bias field
(about +-25 %) and Gaussian noise. So a global threshold cannot solve the task (the bias
field moves distractors across any threshold; best-threshold Dice is about 0.5-0.8),
while a small 3D CNN learns it from local contrast, shape and the wall.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same
arrays. Smooth random fields are sums of a few random plane waves, evaluated separably
(``exp(i w.p) = exp(i wx x) exp(i wy y) exp(i wz z)``), which keeps a 64^3 case at a few
tens of milliseconds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .io import Case, write_image

__all__ = ["make_phantom", "phantom_case_seed", "write_phantom_cohort"]

_ORGAN_WALL_FACTOR = 0.3  # wall intensity relative to the target's (dark rim, like a vessel wall)
_MIN_CLASS_VOXELS = 30  # every labelled class must be visible; otherwise the draw is repeated


class _Grid:
    """Physical coordinates (mm, relative to the volume centre) as broadcastable axes."""

    def __init__(self, shape_zyx: Sequence[int], spacing_xyz: Sequence[float]) -> None:
        nz, ny, nx = (int(n) for n in shape_zyx)
        sx, sy, sz = (float(s) for s in spacing_xyz)
        self.shape = (nz, ny, nx)
        self.x = ((np.arange(nx) - (nx - 1) / 2) * sx).astype(np.float32)[None, None, :]
        self.y = ((np.arange(ny) - (ny - 1) / 2) * sy).astype(np.float32)[None, :, None]
        self.z = ((np.arange(nz) - (nz - 1) / 2) * sz).astype(np.float32)[:, None, None]
        self.extent = np.array([nx * sx, ny * sy, nz * sz])  # (x, y, z) mm
        self.voxel = min(sx, sy, sz)

    def wave_field(
        self, rng: np.random.Generator, n_waves: int, wavelength: tuple[float, float]
    ) -> np.ndarray:
        """A smooth random field, sum of ``n_waves`` plane waves, scaled to about unit std."""
        k = np.empty((n_waves, 3))
        phase = np.empty(n_waves)
        amp = np.empty(n_waves)
        for i in range(n_waves):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction) + 1e-12
            k[i] = direction * (2 * np.pi / rng.uniform(*wavelength))
            phase[i] = rng.uniform(0, 2 * np.pi)
            amp[i] = rng.uniform(0.5, 1.0)
        # cos(k.p + phase) = Re(a_z(z) a_y(y) a_x(x)) with 1D complex exponentials, so the sum over
        # waves is one real matrix product: (z*y, 2W) @ (2W, x). Much faster than W full-size passes.
        ez = amp * np.exp(1j * (np.outer(self.z.ravel(), k[:, 2]) + phase))  # (nz, W)
        ey = np.exp(1j * np.outer(self.y.ravel(), k[:, 1]))  # (ny, W)
        ex = np.exp(1j * np.outer(self.x.ravel(), k[:, 0]))  # (nx, W)
        g = ez[:, None, :] * ey[None, :, :]  # (nz, ny, W)
        lhs = np.concatenate([g.real, -g.imag], axis=-1).reshape(-1, 2 * n_waves).astype(np.float32)
        rhs = np.concatenate([ex.real, ex.imag], axis=-1).T.astype(np.float32)
        field = (lhs @ rhs).reshape(self.shape)
        return field * np.float32(np.sqrt(2.0 / max(n_waves, 1)) / 0.75)

    def box(self, centre: np.ndarray, radius: float) -> tuple[slice, slice, slice] | None:
        """Index box (z, y, x) covering ``centre +- radius`` mm, clipped to the volume; None if outside."""
        out = []
        for coords, c in (
            (self.z.ravel(), centre[2]),
            (self.y.ravel(), centre[1]),
            (self.x.ravel(), centre[0]),
        ):
            idx = np.flatnonzero(np.abs(coords - c) <= radius)
            if idx.size == 0:
                return None
            out.append(slice(int(idx[0]), int(idx[-1]) + 1))
        return out[0], out[1], out[2]

    def ellipsoid(
        self,
        centre: np.ndarray,
        axes: np.ndarray,
        rot: np.ndarray,
        disp: tuple[np.ndarray, ...] | None = None,
    ) -> np.ndarray:
        """Boolean mask of a rotated ellipsoid (optionally warped by a displacement field)."""
        mask = np.zeros(self.shape, dtype=bool)
        # Evaluate only inside the bounding box (+ the largest displacement): most objects are small.
        reach = float(axes.max()) + (max(float(np.abs(d).max()) for d in disp) if disp is not None else 0.0)
        box = self.box(centre, reach + self.voxel)
        if box is None:
            return mask
        zs, ys, xs = box
        px = self.x[:, :, xs] - np.float32(centre[0])
        py = self.y[:, ys, :] - np.float32(centre[1])
        pz = self.z[zs, :, :] - np.float32(centre[2])
        if disp is not None:
            px, py, pz = px + disp[0][box], py + disp[1][box], pz + disp[2][box]
        f = np.zeros(mask[box].shape, dtype=np.float32)
        for i in range(3):
            # Coordinate along the ellipsoid's i-th axis: column i of the rotation matrix.
            q = np.float32(rot[0, i]) * px + np.float32(rot[1, i]) * py + np.float32(rot[2, i]) * pz
            f += (q / np.float32(axes[i])) ** 2
        mask[box] = f <= 1.0
        return mask

    def tube(self, point: np.ndarray, direction: np.ndarray, radius: float) -> np.ndarray:
        """Boolean mask of an infinite cylinder (a vessel) through ``point`` along ``direction``."""
        px, py, pz = self.x - point[0], self.y - point[1], self.z - point[2]
        along = direction[0] * px + direction[1] * py + direction[2] * pz
        dist2 = px**2 + py**2 + pz**2 - along**2
        return dist2 <= radius**2


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary dilation computed only around the mask's bounding box (same result, less work)."""
    out = np.zeros_like(mask)
    if not mask.any():
        return out
    box = []
    for axis in range(mask.ndim):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(
            slice(max(int(idx[0]) - iterations, 0), min(int(idx[-1]) + iterations + 1, mask.shape[axis]))
        )
    out[tuple(box)] = ndimage.binary_dilation(mask[tuple(box)], iterations=iterations)
    return out


def _radius_along(u: np.ndarray, axes: np.ndarray, rot: np.ndarray) -> float:
    """Distance from an ellipsoid's centre to its surface along the unit vector ``u``."""
    q = rot.T @ u
    return float(1.0 / np.sqrt(np.sum((q / axes) ** 2)))


def _random_unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / (np.linalg.norm(v) + 1e-12)


def _draw_targets(
    rng: np.random.Generator, grid: _Grid, n_classes: int
) -> tuple[np.ndarray, list[float], np.ndarray, float]:
    """Label map (uint8, 0..K), per-class intensities and the organ centre/size; retried until valid."""
    length = float(grid.extent.min())
    for _ in range(50):
        axes = length * rng.uniform(0.14, 0.22, size=3)
        rot = Rotation.random(random_state=rng).as_matrix()
        margin = 1.2 * axes.max() + 2 * grid.voxel
        half = np.maximum(grid.extent / 2 - margin, 0.0)
        centre = rng.uniform(-half, half)
        # Low-frequency displacement (wavelengths > organ size) bends the ellipsoid into a blob.
        amp = 0.22 * axes.mean()
        disp = tuple(amp * grid.wave_field(rng, 3, (2.0 * axes.mean(), 5.0 * axes.mean())) for _ in range(3))
        label = grid.ellipsoid(centre, axes, rot, disp).astype(np.uint8)
        organ_intensity = float(rng.uniform(130, 170))
        intensities = [organ_intensity]
        # Further classes: blobs attached to the organ's surface in random directions, with
        # their own brightness (darker / brighter than the organ, alternately).
        factors = [0.62, 1.3, 0.8, 1.15]
        for k in range(2, n_classes + 1):
            u = _random_unit(rng)
            sub_axes = length * rng.uniform(0.08, 0.13, size=3)
            sub_rot = Rotation.random(random_state=rng).as_matrix()
            sub_centre = centre + u * (_radius_along(u, axes, rot) + 0.4 * sub_axes.min())
            mask = grid.ellipsoid(sub_centre, sub_axes, sub_rot, disp) & (label == 0)
            label[mask] = k
            intensities.append(organ_intensity * factors[(k - 2) % len(factors)] * rng.uniform(0.95, 1.05))
        counts = np.bincount(label.ravel(), minlength=n_classes + 1)
        if counts[1:].min() >= _MIN_CLASS_VOXELS:
            return label, intensities, centre, float(axes.mean())
    raise ValueError(
        f"could not place {n_classes} classes in a volume of shape {grid.shape}; use a larger one"
    )


def make_phantom(
    seed: int,
    shape_zyx: Sequence[int] = (48, 64, 64),
    n_classes: int = 1,
    spacing_xyz: Sequence[float] = (1.0, 1.0, 1.5),
) -> tuple[sitk.Image, sitk.Image]:
    """One synthetic MRI-like case: (image float32 in about 0..255, label uint8 in 0..K).

    Deterministic in ``seed``. Both images share spacing, a random origin and identity
    direction. ``shape_zyx`` is the numpy shape (z, y, x); ``spacing_xyz`` is in mm.
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if len(shape_zyx) != 3 or min(shape_zyx) < 16:
        raise ValueError(f"shape_zyx must be 3 sizes of at least 16 voxels, got {tuple(shape_zyx)}")
    rng = np.random.default_rng(seed)
    grid = _Grid(shape_zyx, spacing_xyz)

    label, intensities, _, organ_size = _draw_targets(rng, grid, n_classes)
    foreground = label > 0

    # Body outline (elliptic cross-section along z): tissue inside, near-black air outside.
    bx, by = grid.extent[0] / 2 * rng.uniform(0.95, 1.1), grid.extent[1] / 2 * rng.uniform(0.9, 1.05)
    body = (grid.x / bx) ** 2 + (grid.y / by) ** 2 <= 1.0
    body = np.broadcast_to(body, grid.shape)
    tissue = rng.uniform(60, 80) + rng.uniform(8, 14) * grid.wave_field(rng, 8, (8.0, 24.0))
    clean = np.where(body, tissue, np.float32(8.0)).astype(np.float32)

    # Distractors: blobs and vessels a little darker or brighter than the organ (never equal,
    # so they are distinguishable locally; the bias field still mixes them up globally).
    organ_intensity = intensities[0]

    def distractor_intensity() -> float:
        factor = rng.uniform(0.75, 0.9) if rng.random() < 0.5 else rng.uniform(1.12, 1.3)
        return float(organ_intensity * factor)

    forbidden = _dilate(foreground, 3)
    for _ in range(int(rng.integers(2, 5))):
        for _attempt in range(10):
            axes = organ_size * rng.uniform(0.45, 0.75) * rng.uniform(0.8, 1.2, size=3)
            centre = rng.uniform(-grid.extent / 2 * 0.8, grid.extent / 2 * 0.8)
            blob = grid.ellipsoid(centre, axes, Rotation.random(random_state=rng).as_matrix()) & body
            if blob.any() and not (blob & forbidden).any():
                clean[blob] = distractor_intensity()
                break
    for _ in range(int(rng.integers(1, 3))):
        point = rng.uniform(-grid.extent / 2 * 0.7, grid.extent / 2 * 0.7)
        tube = grid.tube(point, _random_unit(rng), rng.uniform(1.5, 3.0) * grid.voxel) & body & ~forbidden
        clean[tube] = distractor_intensity()

    # The target: a dark wall two voxels thick around the labelled structures, then the classes.
    wall = _dilate(foreground, 2) & ~foreground
    clean[wall] = organ_intensity * _ORGAN_WALL_FACTOR
    texture = 6.0 * grid.wave_field(rng, 6, (6.0, 16.0))
    for k, value in enumerate(intensities, start=1):
        region = label == k
        clean[region] = value + texture[region]

    # Partial-volume blur, smooth multiplicative bias (about +-25 %), then Gaussian noise.
    clean = ndimage.gaussian_filter(clean, sigma=0.6)
    bias = np.exp(
        0.25 * np.clip(grid.wave_field(rng, 3, (1.5 * grid.extent.max(), 3.0 * grid.extent.max())), -1.5, 1.5)
    )
    noisy = clean * bias + rng.normal(0.0, rng.uniform(5.0, 9.0), size=grid.shape).astype(np.float32)
    image_arr = np.clip(noisy, 0.0, 255.0).astype(np.float32)

    origin = tuple(float(v) for v in np.round(rng.uniform(-150.0, 50.0, size=3), 3))
    spacing = tuple(float(s) for s in spacing_xyz)
    image = sitk.GetImageFromArray(image_arr)
    lab = sitk.GetImageFromArray(label)
    for img in (image, lab):
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
    return image, lab


def phantom_case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` in a cohort drawn with ``seed`` (independent streams per case)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def write_phantom_cohort(
    out_dir: str | os.PathLike[str],
    n_cases: int,
    seed: int = 0,
    n_classes: int = 1,
    shape_zyx: Sequence[int] = (48, 64, 64),
    layout: str = "pairs",
) -> list[Case]:
    """Write ``n_cases`` phantoms to ``out_dir`` and return them as cases (IDs ``phantom_000``...).

    ``layout="pairs"``: ``<ID>_image.nrrd`` and ``<ID>_label.nrrd`` side by side;
    ``layout="split"``: ``imagesTr/<ID>.nii.gz`` and ``labelsTr/<ID>.nii.gz``.
    """
    if layout not in ("pairs", "split"):
        raise ValueError(f"layout must be 'pairs' or 'split', got {layout!r}")
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    out = Path(out_dir)
    cases = []
    for i in range(n_cases):
        cid = f"phantom_{i:03d}"
        image, label = make_phantom(phantom_case_seed(seed, i), shape_zyx=shape_zyx, n_classes=n_classes)
        if layout == "pairs":
            img_path, lab_path = out / f"{cid}_image.nrrd", out / f"{cid}_label.nrrd"
        else:
            img_path, lab_path = out / "imagesTr" / f"{cid}.nii.gz", out / "labelsTr" / f"{cid}.nii.gz"
        write_image(image, img_path)
        write_image(label, lab_path)
        cases.append(Case(cid, img_path, lab_path))
    return cases
