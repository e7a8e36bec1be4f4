"""Training crops as in the paper: random rot90 + flip, random crop, streamed from disk.

Each case is preprocessed once into a cache of `.npy` files that are memory-mapped, so a
crop reads only its own voxels and memory stays flat however many cases there are (the
complaint about tools that load the whole dataset into RAM at training start).

The paper's RandomRotFlip rotates the whole volume by k*90 degrees in the x-y plane and
flips it along x or y, then RandomCrop pads (zeros) to the patch size and crops. Rotation
and flip commute with cropping, so we crop a window of the rotated shape first and
rotate only the crop: the same distribution at a fraction of the cost.

Class-centred crops (`class_share` > 0, on in the `auto` plan, off in `paper`): that share of
labelled crops is centred on a voxel of a class drawn at random among the foreground classes
the case has, as nnU-Net's oversampling (a third) does, so a small structure next to a large one
is seen in most batches. The centre is kept within the bounds a random crop may take, so the
padding rule is the same. The voxels come from `class_locations`, a fixed-size sample per class
computed once per case.

Partially labelled cases (voxels = 255, unannotated): every labelled crop of such a case that is
not class-centred is centred on an annotated voxel (`annotated_locations`), so a crop never falls
where nothing is annotated. Fully labelled cases draw exactly as before.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..common.atomic import atomic_path
from ..common.errors import DataError
from ..common.file_formats import UNANNOTATED
from .io import Case, read_image
from .preprocess import Preprocessing, preprocess_image, preprocess_label
from .validation import check_label


@dataclass(frozen=True)
class CachedCase:
    case_id: str
    image: Path  # float32 (z, y, x) .npy, normalised, on the working grid
    label: Path | None  # uint8 (z, y, x) .npy

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        image = np.load(self.image, mmap_mode="r")
        label = np.load(self.label, mmap_mode="r") if self.label else None
        return image, label


def _cache_key(case: Case, prep: Preprocessing) -> str:
    parts = [json.dumps(prep.to_dict(), sort_keys=True)]
    for path in (case.image, case.label):
        if path is not None:
            stat = Path(path).stat()
            parts.append(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                np.save(f, array)
        except OSError as exc:
            # numpy reports a short write ("N requested and M written") without an errno; with the
            # partial file still there, a full disk shows as less room than the array needs.
            if exc.errno is None and shutil.disk_usage(tmp.parent).free < array.nbytes:
                raise OSError(errno.ENOSPC, f"no space left to write {path.name}", str(path)) from exc
            raise


def cache_case(case: Case, prep: Preprocessing, cache_dir: Path, n_classes: int | None = None) -> CachedCase:
    """Preprocess one case into `cache_dir` (reused when the files and settings are unchanged)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _cache_key(case, prep)
    image_npy = cache_dir / f"{case.case_id}-{key}-image.npy"
    label_npy = cache_dir / f"{case.case_id}-{key}-label.npy" if case.label else None
    if image_npy.exists() and (label_npy is None or label_npy.exists()):
        return CachedCase(case.case_id, image_npy, label_npy)
    image = read_image(case.image)
    label = None
    if label_npy is not None:
        label = read_image(case.label)
        max_label = None if n_classes is None else n_classes - 1
        check_label(label, image, str(case.label), max_label)
    try:
        if label_npy is not None:
            working = preprocess_label(label, prep)
            if not np.any(working != UNANNOTATED):
                raise DataError(
                    f"{case.label}: no annotated voxel is left on the working grid (every voxel 255, "
                    "unannotated); annotate more, or use the case as unlabelled"
                )
            _save_npy(label_npy, working)
        _save_npy(image_npy, preprocess_image(image, prep))
    except OSError as exc:
        # Each file is written atomically; removing the pair's other half leaves no case half cached.
        for path in (label_npy, image_npy):
            if path is not None:
                path.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DataError(
                f"no space left on the device holding {cache_dir} while caching case {case.case_id}: "
                "free some space there (or train into a folder on another disk) and run the same "
                "command again; nothing half-written was kept"
            ) from exc
        raise
    return CachedCase(case.case_id, image_npy, label_npy)


def cache_cases(
    cases: Sequence[Case], prep: Preprocessing, cache_dir: Path, n_classes: int | None = None
) -> list[CachedCase]:
    """:func:`cache_case` for each case; a case that cannot be used is named in the error (a
    round must never fail on one case without saying which)."""
    out = []
    for case in cases:
        try:
            out.append(cache_case(case, prep, cache_dir, n_classes))
        except DataError as exc:
            if case.case_id in str(exc):
                raise
            raise DataError(
                f"case {case.case_id} ({case.image}): {exc}; fix or replace its scan, or leave the case out"
            ) from exc
    return out


def partially_labeled(cases: Sequence[CachedCase]) -> list[CachedCase]:
    """The partially labelled cases among `cases`, as unlabelled ones (their scans, no label): they
    also serve the student as unlabelled data, which never sees a label."""
    out = []
    for case in cases:
        _, label = case.load()
        if label is not None and np.any(label == UNANNOTATED):
            out.append(CachedCase(case.case_id, case.image, None))
    return out


def labeled_case_weights(
    cases: Sequence[CachedCase], partial_ids: set[str], partial_share: float
) -> list[float] | None:
    """How often to draw each labelled case: uniformly (None), except when full and partial
    labels are mixed and the partial cases' uniform share exceeds `partial_share`; then the
    partial cases share `partial_share` and the full ones the rest (uniformly within each).

    Why: a scribbled case has a fraction of a percent of its voxels annotated; drawn as often as a
    full label, many of them crowd out the full labels' crops at a fixed number of iterations."""
    flags = [c.case_id in partial_ids for c in cases]
    n_partial = sum(flags)
    n_full = len(cases) - n_partial
    if n_partial == 0 or n_full == 0 or n_partial / len(cases) <= partial_share:
        return None
    return [partial_share / n_partial if p else (1 - partial_share) / n_full for p in flags]


def weighted_index(cdf: np.ndarray, u: float) -> int:
    """The case index a uniform draw `u` in [0, 1) picks from cumulative case weights."""
    return min(int(np.searchsorted(cdf, u, side="right")), len(cdf) - 1)


# Voxels kept per class for class-centred crops (nnU-Net keeps 10 000 too): enough to cover a
# structure's extent, small enough to hold for every case.
LOCATIONS_PER_CLASS = 10_000


def class_locations(label: np.ndarray, per_class: int = LOCATIONS_PER_CLASS) -> dict[int, np.ndarray]:
    """{class: (n, 3) int (z, y, x) voxels of that class}, for each foreground class present
    (255, unannotated, is no class); at most `per_class` voxels each, a fixed sample (the same
    for the same label map)."""
    array = np.asarray(label)
    rng = np.random.default_rng(0)
    out = {}
    for cls in np.unique(array):
        if cls == 0 or cls == UNANNOTATED:
            continue
        out[int(cls)] = _fixed_sample(np.argwhere(array == cls), per_class, rng)
    return out


def annotated_locations(label: np.ndarray, count: int = LOCATIONS_PER_CLASS) -> np.ndarray | None:
    """(n, 3) int (z, y, x) annotated voxels (any value but 255) of a partial label, at most
    `count`, a fixed sample; None for a full label (its crops are drawn anywhere) and for one
    with nothing annotated (`cache_case` refuses those; its crops would teach nothing anyway)."""
    array = np.asarray(label)
    annotated = array != UNANNOTATED
    if annotated.all() or not annotated.any():
        return None
    return _fixed_sample(np.argwhere(annotated), count, np.random.default_rng(0))


def _fixed_sample(where: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if len(where) > count:
        where = where[np.sort(rng.choice(len(where), count, replace=False))]
    return where.astype(np.int64)


def crop_bounds(n: int, w: int) -> tuple[int, int]:
    """Lowest and highest start of a window `w` on an axis of `n` voxels (negative: zero padding
    before; a volume smaller than the window is centred up to the random draw)."""
    pad = max(w - n, 0)
    return -(pad // 2), max(n + pad - w, 0) - pad // 2


def centred_starts(
    center: tuple[int, int, int] | np.ndarray, shape: tuple[int, ...], window: tuple[int, int, int]
) -> list[int]:
    """Window starts that put `center` in the middle of the window, kept within `crop_bounds`."""
    starts = []
    for c, n, w in zip(center, shape, window, strict=True):
        lo, hi = crop_bounds(n, w)
        starts.append(int(min(max(int(c) - w // 2, lo), hi)))
    return starts


def random_crop(
    image: np.ndarray,
    label: np.ndarray | None,
    patch_zyx: tuple[int, int, int],
    rng: np.random.Generator,
    augment: bool = True,
    center: tuple[int, int, int] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One training crop (zero-padded where the volume is smaller than the patch); with
    `center`, the window is centred on that (z, y, x) voxel instead of drawn at random."""
    k = int(rng.integers(0, 4)) if augment else 0
    pz, py, px = patch_zyx
    # Crop a window of the pre-rotation shape: odd k swaps the x and y extents.
    window = (pz, px, py) if k % 2 else (pz, py, px)
    if center is not None:
        starts = centred_starts(center, image.shape, window)
    else:
        starts = []
        for n, w in zip(image.shape, window, strict=True):
            lo, hi = crop_bounds(n, w)
            starts.append(int(rng.integers(0, hi - lo + 1)) + lo)
    crops = []
    for volume, fill in ((image, 0.0), (label, 0)):
        if volume is None:
            crops.append(None)
            continue
        out = np.full(window, fill, dtype=volume.dtype)
        src, dst = [], []
        for start, n, w in zip(starts, volume.shape, window, strict=True):
            lo, hi = max(start, 0), min(start + w, n)
            src.append(slice(lo, hi))
            dst.append(slice(lo - start, hi - start))
        out[tuple(dst)] = volume[tuple(src)]
        if augment:
            out = np.rot90(out, k, axes=(1, 2))
        crops.append(out)
    if augment:
        axis = int(rng.integers(1, 3))  # the paper flips along x or y, never z
        crops = [None if c is None else np.flip(c, axis=axis) for c in crops]
    return tuple(None if c is None else np.ascontiguousarray(c) for c in crops)  # type: ignore[return-value]


class CropStream(IterableDataset):
    """An endless stream of random crops from cached cases (one stream per data loader)."""

    def __init__(
        self,
        cases: Sequence[CachedCase],
        patch_zyx: tuple[int, int, int],
        seed: int,
        augment: bool = True,
        with_labels: bool = True,
        class_share: float = 0.0,
        case_weights: Sequence[float] | None = None,
    ) -> None:
        if not cases:
            raise DataError("no cases to sample crops from")
        self.cases, self.patch_zyx, self.seed = list(cases), patch_zyx, seed
        self.case_cdf = None if case_weights is None else np.cumsum(case_weights)
        self.augment, self.with_labels = augment, with_labels
        self.class_share = class_share if with_labels else 0.0
        self._locations: dict[int, dict[int, np.ndarray]] = {}  # per case index, filled on first use
        self._annotated: dict[int, np.ndarray | None] = {}  # the same; None for a full label

    def _center(self, index: int, label: np.ndarray | None, rng: np.random.Generator) -> np.ndarray | None:
        """The voxel to centre the crop on, or None (a random crop): a class-centred crop's, else
        for a partial label an annotated voxel's. Draws nothing more for a full label, so the
        paper's crop stream is unchanged."""
        if label is None:
            return None
        center = self._class_center(index, label, rng)
        if center is not None:
            return center
        if index not in self._annotated:
            self._annotated[index] = annotated_locations(label)
        annotated = self._annotated[index]
        if annotated is None:
            return None
        return annotated[int(rng.integers(0, len(annotated)))]

    def _class_center(self, index: int, label: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """A voxel of a random class of case `index` for a class-centred crop, or None.

        Draws nothing when `class_share` is 0."""
        if self.class_share <= 0 or rng.random() >= self.class_share:
            return None
        if index not in self._locations:
            self._locations[index] = class_locations(label)
        locations = self._locations[index]
        if not locations:  # a case with background only: a random crop
            return None
        voxels = locations[sorted(locations)[int(rng.integers(0, len(locations)))]]
        return voxels[int(rng.integers(0, len(voxels)))]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, worker])
        while True:
            if self.case_cdf is None:  # the paper's draw: one integer
                index = int(rng.integers(0, len(self.cases)))
            else:
                index = weighted_index(self.case_cdf, rng.random())
            image, label = self.cases[index].load()
            if not self.with_labels:
                label = None
            center = self._center(index, label, rng)
            img, lab = random_crop(image, label, self.patch_zyx, rng, self.augment, center)
            lab_t = (
                torch.from_numpy(lab.astype(np.int64))
                if lab is not None
                else torch.zeros(0, dtype=torch.int64)
            )
            yield torch.from_numpy(img)[None], lab_t


def batch_iterator(
    stream: CropStream, batch_size: int, num_workers: int = 0, pin_memory: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches from a crop stream; workers each get their own random stream."""
    loader = DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    return iter(loader)


def default_num_workers() -> int:
    """Workers keep a GPU fed; on a small CPU-only machine they only compete with training."""
    cpus = os.cpu_count() or 1
    return 0 if cpus <= 4 or not torch.cuda.is_available() else min(8, cpus // 2)
