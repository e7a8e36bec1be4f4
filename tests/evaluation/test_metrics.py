"""Metrics against analytic shapes and an independent brute-force surface-distance reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from reciprocalseg.common.errors import DataError
from reciprocalseg.evaluation import metrics as M

ANISO = (0.625, 0.625, 2.5)  # (x, y, z) mm, typical of LA MRI / CT


# ---------------------------------------------------------------------------------------------- helpers


def ball(shape_zyx, center_mm_zyx, radius_mm, spacing_xyz=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Voxels whose centre lies within radius_mm of the centre (physical space, voxel i at i*spacing)."""
    sp = np.asarray(spacing_xyz, dtype=float)[::-1]
    grids = np.ogrid[tuple(slice(0, n) for n in shape_zyx)]
    d2 = sum((g * s - c) ** 2 for g, s, c in zip(grids, sp, center_mm_zyx, strict=True))
    return d2 <= radius_mm**2


def sphere_overlap_dice(r: float, d: float) -> float:
    """Dice of two balls of radius r whose centres are d apart (lens volume / ball volume)."""
    lens = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    return lens / (4 / 3 * math.pi * r**3)


def shifted_sphere_surface_stats(r: float, d: float) -> tuple[float, float]:
    """(95th percentile, mean) of the distance from sphere A's surface to sphere B = A + d.

    A point at polar cosine t (w.r.t. the shift) is | sqrt(r^2 - 2 r d t + d^2) - r | from B's surface,
    and t is uniform on [-1, 1] over a sphere's surface (Archimedes). For small d this is ~ d|t|, so the
    95th percentile is ~0.95 d and the mean ~d/2 (not d: most of the surface moves tangentially).
    """
    t = np.linspace(-1.0, 1.0, 400_001)
    f = np.abs(np.sqrt(r * r - 2 * r * d * t + d * d) - r)
    return float(np.percentile(f, 95)), float(f.mean())


def brute_surface(mask: np.ndarray) -> np.ndarray:
    """Surface by explicit 6-neighbour test (outside the array = background), without ndimage."""
    p = np.pad(mask, 1, constant_values=False)
    interior = p.copy()
    for axis in range(mask.ndim):
        for step in (1, -1):
            interior &= np.roll(p, step, axis=axis)
    return mask & ~interior[(slice(1, -1),) * mask.ndim]


def brute_distances(a: np.ndarray, b: np.ndarray, spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-surface-voxel distances with a k-d tree over physical coordinates."""
    sp = np.asarray(spacing_zyx, dtype=float)
    pa = np.argwhere(brute_surface(a)) * sp
    pb = np.argwhere(brute_surface(b)) * sp
    return cKDTree(pb).query(pa)[0], cKDTree(pa).query(pb)[0]


def cube(shape, corner, side) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(c, c + s) for c, s in zip(corner, side, strict=True))] = True
    return m


# ---------------------------------------------------------------------------------------------- identities


def test_identical_masks_are_perfect():
    a = ball((40, 40, 40), (20, 20, 20), 12)
    assert M.dice(a, a) == 1.0
    assert M.jaccard(a, a) == 1.0
    for f in (M.hd95, M.asd, M.assd, M.hausdorff):
        assert f(a, a, ANISO) == 0.0
    d_pr, d_rp = M.surface_distances(a, a, ANISO[::-1])
    assert d_pr.size == d_rp.size > 1000 and not d_pr.any() and not d_rp.any()


def test_non_boolean_inputs_are_binarised_like_medpy():
    a = cube((10, 10, 10), (2, 2, 2), (4, 4, 4)).astype(np.int16) * 7
    b = cube((10, 10, 10), (2, 2, 4), (4, 4, 4)).astype(np.float32)
    assert M.dice(a, b) == pytest.approx(0.5)
    assert M.hausdorff(a, b) == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------- spheres


@pytest.mark.parametrize(
    ("spacing", "shape", "shift_mm_zyx"),
    [
        ((1.0, 1.0, 1.0), (44, 44, 50), (0.0, 0.0, 4.0)),  # 4 voxels along x
        ((1.0, 1.0, 1.0), (50, 44, 44), (3.0, 0.0, 0.0)),  # 3 voxels along z
        (ANISO, (24, 60, 64), (0.0, 0.0, 5.0)),  # 8 voxels along x
        (ANISO, (28, 56, 56), (5.0, 0.0, 0.0)),  # 2 voxels along z
    ],
)
def test_shifted_spheres_match_analytic_values(spacing, shape, shift_mm_zyx):
    r = 15.0  # mm; 15 voxels isotropic, 24 x 24 x 6 voxels anisotropic
    centre = np.array([s * n / 2 for s, n in zip(spacing[::-1], shape, strict=True)])
    a = ball(shape, centre, r, spacing)
    b = ball(shape, centre + np.array(shift_mm_zyx), r, spacing)
    d = float(np.linalg.norm(shift_mm_zyx))
    voxel_along_shift = max(s for s, t in zip(spacing[::-1], shift_mm_zyx, strict=True) if t)
    # Surface voxels stand in for the surface, so distances carry a discretisation error of the order
    # of the coarsest spacing (2.5 mm here for the anisotropic grid, whatever the shift direction).
    coarsest = max(spacing)

    dc = M.dice(a, b)
    assert dc == pytest.approx(sphere_overlap_dice(r, d), abs=0.02)
    assert 0.7 < dc < 0.9  # the shift is large enough to matter
    assert M.jaccard(a, b) == pytest.approx(dc / (2 - dc), rel=1e-12)

    # Pure shift by whole voxels: every surface voxel's image is a surface voxel d away, and the poles
    # (moving along the shift) attain d, so the Hausdorff distance is exactly d.
    assert M.hausdorff(a, b, spacing) == pytest.approx(d, abs=1e-9)
    p95, mean = shifted_sphere_surface_stats(r, d)
    assert M.hd95(a, b, spacing) == pytest.approx(p95, abs=voxel_along_shift)
    assert M.hd95(a, b, spacing) <= d + 1e-9
    # ASD of a shifted sphere is ~d/2, not d (see shifted_sphere_surface_stats)
    assert M.asd(a, b, spacing) == pytest.approx(mean, abs=0.5 * coarsest)
    assert M.asd(b, a, spacing) == pytest.approx(mean, abs=0.5 * coarsest)
    assert M.assd(a, b, spacing) == pytest.approx(mean, abs=0.5 * coarsest)
    assert M.asd(a, b, spacing) < 0.6 * d


def test_spacing_order_is_xyz():
    # Shift of 3 voxels along x; spacing (x, y, z) = (2, 1, 1) must give 6 mm, not 3.
    a = cube((12, 12, 20), (2, 2, 2), (8, 8, 8))
    b = np.roll(a, 3, axis=2)
    assert M.hausdorff(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert M.hausdorff(a, b, (1.0, 1.0, 2.0)) == pytest.approx(3.0)
    # surface_distances takes (z, y, x) directly
    d_ab, _ = M.surface_distances(a, b, (1.0, 1.0, 2.0))
    assert d_ab.max() == pytest.approx(6.0)


# ---------------------------------------------------------------------------------------------- cubes


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 1.25, 3.0)])
def test_cube_vs_shifted_cube(spacing):
    side, k = 10, 3
    a = cube((16, 16, 20), (3, 3, 3), (side, side, side))
    b = cube((16, 16, 20), (3, 3, 3 + k), (side, side, side))  # shifted k voxels along x
    sx = spacing[0]
    assert M.dice(a, b) == pytest.approx((side - k) / side)
    assert M.jaccard(a, b) == pytest.approx((side - k) / (side + k))
    # A point of a's left face is >= k*sx from any point of b; every point of a is <= k*sx from its image.
    assert M.hausdorff(a, b, spacing) == pytest.approx(k * sx)
    d_ab, d_ba = brute_distances(a, b, spacing[::-1])
    assert M.hd95(a, b, spacing) == pytest.approx(np.percentile(np.concatenate((d_ab, d_ba)), 95))
    assert M.asd(a, b, spacing) == pytest.approx(d_ab.mean())
    assert M.assd(a, b, spacing) == pytest.approx(np.concatenate((d_ab, d_ba)).mean())
    # The left face alone (side^2 of the 488 surface voxels) sits at exactly k*sx, so the mean is well
    # below the shift but the 95th percentile is the shift itself.
    assert M.hd95(a, b, spacing) == pytest.approx(k * sx)
    assert 0 < M.asd(a, b, spacing) < 0.5 * k * sx


def test_surface_distances_match_brute_force_on_random_blobs():
    rng = np.random.default_rng(1234)
    from scipy import ndimage

    for _ in range(5):
        shape = tuple(int(n) for n in rng.integers(10, 24, size=3))
        a = ndimage.binary_dilation(rng.random(shape) < 0.01, iterations=2)
        b = ndimage.binary_dilation(rng.random(shape) < 0.01, iterations=2)
        a[0, :4, :4] = True  # touches the array border: outside counts as background
        b[-1, -3:, :] = True
        spacing_zyx = tuple(float(s) for s in rng.uniform(0.4, 3.0, size=3))
        got_ab, got_ba = M.surface_distances(a, b, spacing_zyx)
        ref_ab, ref_ba = brute_distances(a, b, spacing_zyx)
        # both enumerate surface voxels in C order, so the arrays align element by element
        np.testing.assert_allclose(got_ab, ref_ab, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_ba, ref_ba, rtol=1e-12, atol=1e-12)
        assert got_ab.max() > 1.0  # not a degenerate case


def test_doubling_spacing_doubles_distances():
    a = ball((30, 40, 40), (15, 20, 20), 10)
    b = ball((30, 40, 40), (16, 22, 19), 9)
    base = (0.7, 0.9, 1.3)
    double = tuple(2 * s for s in base)
    for f in (M.hd95, M.asd, M.assd, M.hausdorff):
        v = f(a, b, base)
        assert v > 0.5
        assert f(a, b, double) == pytest.approx(2 * v, rel=1e-12)
    # None, 1 and (1, 1, 1) all mean voxels
    assert M.hd95(a, b) == M.hd95(a, b, 1.0) == M.hd95(a, b, (1, 1, 1))
    assert M.hd95(a, b, 3.0) == pytest.approx(3 * M.hd95(a, b))


def test_asd_is_directed_and_hd95_conventions_differ():
    a = cube((20, 20, 30), (2, 2, 2), (6, 6, 6))
    b = a.copy()
    b[12:18, 12:18, 20:26] = True  # a far island that only b has
    # Every surface voxel of a is on b's surface, but b's island is far from a.
    assert M.asd(a, b) == 0.0
    assert M.asd(b, a) > 5.0
    d_ab, d_ba = M.surface_distances(a, b)
    union = np.percentile(np.concatenate((d_ab, d_ba)), 95)
    directed = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    assert M.hd95(a, b) == pytest.approx(union)
    assert M.hd95(a, b, directed_max=True) == pytest.approx(directed)
    assert directed > union > 0
    # ASSD pools both directions (medpy 0.5), so the larger surface weighs more than in a mean of means
    assert M.assd(a, b) == pytest.approx(d_ba.sum() / (d_ab.size + d_ba.size))
    assert M.assd(a, b) > 0.5 * (d_ab.mean() + d_ba.mean()) + 1.0


# ---------------------------------------------------------------------------------------------- edge cases


def test_both_empty():
    z = np.zeros((8, 8, 8), dtype=bool)
    assert M.dice(z, z) == 1.0 and M.jaccard(z, z) == 1.0
    for f in (M.hd95, M.asd, M.assd, M.hausdorff):
        assert f(z, z, ANISO) == 0.0
    d_pr, d_rp = M.surface_distances(z, z)
    assert d_pr.size == 0 and d_rp.size == 0


def test_exactly_one_empty():
    z = np.zeros((8, 8, 8), dtype=bool)
    a = cube(z.shape, (2, 2, 2), (3, 3, 3))
    for p, r in ((a, z), (z, a)):
        assert M.dice(p, r) == 0.0 and M.jaccard(p, r) == 0.0
        for f in (M.hd95, M.asd, M.assd, M.hausdorff):
            assert math.isnan(f(p, r, ANISO))
    d_pr, d_rp = M.surface_distances(a, z)
    assert d_pr.size == 26 and np.isinf(d_pr).all() and d_rp.size == 0


def test_bad_inputs_raise_data_error():
    a = np.ones((4, 4, 4), dtype=bool)
    with pytest.raises(DataError, match="shapes"):
        M.dice(a, np.ones((4, 4, 5), dtype=bool))
    with pytest.raises(DataError, match="shapes"):
        M.hd95(a, np.ones((4, 4, 5), dtype=bool))
    with pytest.raises(DataError, match="2 values"):
        M.hd95(a, a, (1.0, 1.0))
    with pytest.raises(DataError, match="positive"):
        M.asd(a, a, (1.0, 0.0, 1.0))


# ---------------------------------------------------------------------------------------------- per case


def test_evaluate_case_multiclass():
    shape = (20, 24, 32)
    spacing = (0.5, 1.0, 2.0)  # (x, y, z)
    ref = np.zeros(shape, dtype=np.uint8)
    pred = np.zeros(shape, dtype=np.int64)
    c1 = cube(shape, (2, 2, 2), (6, 6, 6))
    c2_ref = cube(shape, (10, 12, 10), (8, 8, 10))
    c2_pred = cube(shape, (10, 12, 14), (8, 8, 10))  # shifted 4 voxels (2 mm) along x
    ref[c1] = 1
    pred[c1] = 1
    ref[c2_ref] = 2
    pred[c2_pred] = 2
    ref[15:18, 2:5, 2:5] = 3  # class 3 missed entirely by the prediction

    res = M.evaluate_case(pred, ref, spacing, n_classes=5)
    assert sorted(res) == [1, 2, 3, 4]

    assert res[1] == M.CaseMetrics(1.0, 1.0, 0.0, 0.0, 0.0, 0.0)

    m2 = res[2]
    assert m2.dice == pytest.approx(6 / 10) and m2.jaccard == pytest.approx(6 / 14)
    assert m2.hd95_mm == pytest.approx(M.hd95(c2_pred, c2_ref, spacing))
    assert m2.asd_mm == pytest.approx(M.asd(c2_pred, c2_ref, spacing))
    assert m2.hd95_vox == pytest.approx(M.hd95(c2_pred, c2_ref))
    assert m2.asd_vox == pytest.approx(M.asd(c2_pred, c2_ref))
    assert m2.hd95_mm == pytest.approx(2.0) and m2.hd95_vox == pytest.approx(4.0)
    assert 0 < m2.asd_mm < m2.asd_vox

    m3 = res[3]
    assert m3.dice == 0.0 and m3.jaccard == 0.0
    assert all(math.isnan(v) for v in (m3.hd95_mm, m3.asd_mm, m3.hd95_vox, m3.asd_vox))

    assert res[4] == M.CaseMetrics(1.0, 1.0, 0.0, 0.0, 0.0, 0.0)  # absent from both

    # without n_classes, K is the largest label present
    assert sorted(M.evaluate_case(pred, ref, spacing)) == [1, 2, 3]
    assert M.evaluate_case(pred, ref, spacing)[2] == m2


def test_evaluate_case_rejects_bad_labels():
    a = np.zeros((4, 4, 4), dtype=np.int16)
    b = a.copy()
    b[1, 1, 1] = 2
    with pytest.raises(DataError, match="n_classes=2"):
        M.evaluate_case(a, b, (1, 1, 1), n_classes=2)
    b[1, 1, 1] = -1
    with pytest.raises(DataError, match="negative"):
        M.evaluate_case(a, b, (1, 1, 1))


def test_evaluate_case_full_size_scan_equals_small_crop():
    # A scan-sized volume (576 x 576 x 88) holding small objects must give exactly what a tight array
    # around the same objects gives: the bounding-box crop is exact (and what keeps this fast).
    small_ref = ball((30, 40, 40), (15, 20, 20), 12, ANISO).astype(np.uint8)
    small_pred = ball((30, 40, 40), (15.5, 21, 19), 11.5, ANISO).astype(np.uint8)
    big_ref = np.zeros((88, 576, 576), dtype=np.uint8)
    big_pred = np.zeros_like(big_ref)
    where = (slice(40, 70), slice(300, 340), slice(100, 140))
    big_ref[where] = small_ref
    big_pred[where] = small_pred
    small = M.evaluate_case(small_pred, small_ref, ANISO, n_classes=2)[1]
    big = M.evaluate_case(big_pred, big_ref, ANISO, n_classes=2)[1]
    assert big == small
    assert 0.8 < small.dice < 1.0 and small.hd95_mm > 0


# ---------------------------------------------------------------------------------------------- summary


def test_summarize_ignores_and_counts_nan():
    rows = [
        {"dice": 0.9, "hd95_mm": 2.0},
        {"dice": 0.7, "hd95_mm": math.nan},
        {"dice": 0.8, "hd95_mm": 4.0},
        {"dice": 0.0, "hd95_mm": math.nan, "only_here": math.nan},
    ]
    s = M.summarize(rows)
    assert list(s) == ["dice", "hd95_mm", "only_here"]
    mean, std = s["dice"]
    assert mean == pytest.approx(0.6)
    assert std == pytest.approx(math.sqrt((0.09 + 0.01 + 0.04 + 0.36) / 4))
    assert s["hd95_mm"] == pytest.approx((3.0, 1.0))
    assert s.counts == {"dice": 4, "hd95_mm": 2, "only_here": 0}
    assert s.nan_counts == {"dice": 0, "hd95_mm": 2, "only_here": 1}
    assert all(math.isnan(v) for v in s["only_here"])
    d = s.to_dict()
    assert d["hd95_mm"] == {"mean": 3.0, "std": 1.0, "n": 2, "n_nan": 2}


def test_summarize_case_metrics_rows():
    rows = [
        M.CaseMetrics(0.8, 0.6, 3.0, 1.0, 6.0, 2.0).to_dict(),
        M.CaseMetrics(0.0, 0.0, math.nan, math.nan, math.nan, math.nan).to_dict(),
    ]
    s = M.summarize(rows)
    assert s["dice"] == pytest.approx((0.4, 0.4))
    assert s["hd95_vox"] == pytest.approx((6.0, 0.0))
    assert s.nan_counts["asd_mm"] == 1 and s.counts["asd_mm"] == 1
