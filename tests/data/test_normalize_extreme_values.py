"""Finite but huge voxel values never become NaN on their way to a network.

A scan may hold any finite float32 (the NaN/inf check passes it). The per-scan z-score summed their
squares in float32, which overflowed to inf for values above about 1e19, and the scan reached the
network as NaN (a diverging round, or NaN probabilities in the service's prediction).
"""

from __future__ import annotations

import numpy as np

from reciprocalseg.data.preprocess import Preprocessing, normalize_intensity


def test_zscore_of_huge_finite_values_is_finite_and_right() -> None:
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(8, 16, 16)) * 1e37 + 1e38).astype(np.float32)
    out = normalize_intensity(array, Preprocessing())
    assert out.dtype == np.float32 and np.isfinite(out).all()
    exact = (array.astype(np.float64) - array.astype(np.float64).mean()) / array.astype(np.float64).std()
    np.testing.assert_allclose(out, exact, atol=1e-4)


def test_zscore_of_ordinary_values_is_unchanged() -> None:
    array = np.random.default_rng(1).normal(size=(8, 16, 16)).astype(np.float32) * 100 + 50
    out = normalize_intensity(array, Preprocessing())
    expected = ((array - float(array.mean())) / float(array.std())).astype(np.float32)
    np.testing.assert_array_equal(out, expected)
