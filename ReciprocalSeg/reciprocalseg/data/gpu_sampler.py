"""Training crops drawn on the compute device from cases held there.

When the preprocessed cases fit in GPU memory (80 left-atrium scans are well under 1 GiB),
copying every crop from host memory through a DataLoader is the slowest part of an
iteration. `DeviceCases` loads the cached `.npy` volumes once onto the device and
`DeviceCases.batches` cuts the crops there, with the paper's augmentation (random rot90 in
the x-y plane, then a flip along x or y), in the same distribution as
`sampling.random_crop`: zero padding where a volume is smaller than the patch, and the
crop window taken in the pre-rotation shape, so only the crop is rotated.

The random draws (case, rotation, window start, flip axis) are a handful of integers per
crop and come from a CPU `torch.Generator`: drawing them on the GPU would need a
device-to-host synchronisation to turn them into slice bounds, and a CPU generator makes a
seed give the same crops on any device (tests run the sampler on CPU tensors).

Class-centred crops (`class_share`, see sampling.py) centre that share of labelled crops on a
voxel of a random class of the case; the voxel samples (`sampling.class_locations`) are kept
in host memory, since they only become slice bounds. Crops of partially labelled cases are
centred on annotated voxels as in sampling.py (`sampling.annotated_locations`). A case with
several channels is held as (C, z, y, x) and cropped, rotated and flipped on all channels at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..common.errors import DataError
from .sampling import (
    CachedCase,
    annotated_locations,
    centred_starts,
    class_locations,
    crop_bounds,
    weighted_index,
)

Triple = tuple[int, int, int]

# "auto" holds the cases on the GPU only when they take less than this share of its free
# memory: a 112x112x80 reciprocal step needs a few GiB of activations besides.
DEVICE_MEMORY_FRACTION = 0.4


def cached_bytes(cases: Sequence[CachedCase], with_labels: bool = True) -> int:
    """Bytes the cases take once loaded (read from the .npy headers; no voxel is read)."""
    total = 0
    for case in cases:
        image, label = case.load()  # memory-mapped: only the header is parsed
        total += image.size * 4  # held as float32
        if with_labels and label is not None:
            total += label.size  # held as uint8
    return total


def should_hold_on_device(cases: Sequence[CachedCase], device: torch.device, setting: str = "auto") -> bool:
    """Whether to use `DeviceCases` for `setting` ("auto", "on" or "off") on `device`.

    "on" holds the cases on the training device whatever it is (CPU included: tests, and
    machines with memory to spare); "auto" only on a CUDA device with room for them.
    """
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"data_on_gpu={setting!r}: use 'auto', 'on' or 'off'")
    if setting == "off" or not cases:
        return False
    if setting == "on":
        return True
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return cached_bytes(cases) < DEVICE_MEMORY_FRACTION * free


def crop_on_device(
    volume: torch.Tensor,
    starts: Sequence[int],
    window: Sequence[int],
    k: int,
    flip_axis: int | None,
    fill: float | int = 0,
) -> torch.Tensor:
    """The window at `starts` (zero-filled outside the volume), rotated k*90 deg in (y, x), flipped.

    Mirrors `sampling.random_crop` for given draws: rot90 over the (y, x) axes as numpy's, then
    a flip along `flip_axis` (1 = y, 2 = x; None = no flip). Leading (channel) axes are kept whole.
    """
    lead = volume.shape[:-3]
    src, dst = [slice(None)] * len(lead), [slice(None)] * len(lead)
    for start, n, w in zip(starts, volume.shape[-3:], window, strict=True):
        lo, hi = max(start, 0), min(start + w, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    spatial = dst[len(lead) :]
    inside = all(d.start == 0 and d.stop == w for d, w in zip(spatial, window, strict=True))
    if inside:
        crop = volume[tuple(src)]  # a view; the rotation/flip/stack below copy it once
    else:
        crop = volume.new_full((*lead, *window), fill)
        crop[tuple(dst)] = volume[tuple(src)]
    if k % 4:
        crop = torch.rot90(crop, k, dims=(-2, -1))
    if flip_axis is not None:
        crop = torch.flip(crop, dims=(flip_axis - 3,))
    return crop


class CropDraw(NamedTuple):
    """The random choices behind one crop."""

    index: int  # which case
    k: int  # rot90 count in the (y, x) plane
    starts: Triple  # window corner (z, y, x) in the unrotated volume; negative = zero padding before
    window: Triple  # window shape in the unrotated volume (y and x swapped for odd k)
    flip_axis: int | None  # 1 = y, 2 = x; None without augmentation


class DeviceCases:
    """Cached cases held as tensors on one device, and endless crop batches drawn from them."""

    def __init__(
        self,
        cases: Sequence[CachedCase],
        device: torch.device | str,
        with_labels: bool = True,
        class_share: float = 0.0,
        case_weights: Sequence[float] | None = None,
    ) -> None:
        if not cases:
            raise DataError("no cases to sample crops from")
        self.device = torch.device(device)
        self.case_cdf = None if case_weights is None else np.cumsum(case_weights)
        self.case_ids = [c.case_id for c in cases]
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor | None] = []
        self.class_share = class_share if with_labels else 0.0
        self.locations: list[dict[int, np.ndarray]] = []
        self.annotated: list[np.ndarray | None] = []  # per case; None: a full label (or none held)
        for case in cases:
            image, label = case.load()
            self.images.append(_to_device(image, torch.float32, self.device))
            keep = with_labels and label is not None
            self.labels.append(_to_device(label, torch.uint8, self.device) if keep else None)
            if keep and self.class_share > 0:
                self.locations.append(class_locations(label))
            self.annotated.append(annotated_locations(label) if keep else None)

    @property
    def has_labels(self) -> bool:
        return all(lab is not None for lab in self.labels)

    @property
    def nbytes(self) -> int:
        sizes = [t.numel() * t.element_size() for t in (*self.images, *self.labels) if t is not None]
        return sum(sizes)

    def _center(self, index: int, generator: torch.Generator) -> np.ndarray | None:
        """The voxel to centre the crop on, or None (a random crop): a class-centred crop's, else
        for a partial label an annotated voxel's (no extra draw for a full label)."""
        center = self._class_center(index, generator)
        annotated = self.annotated[index]
        if center is not None or annotated is None:
            return center
        return annotated[_randint(generator, len(annotated))]

    def _class_center(self, index: int, generator: torch.Generator) -> np.ndarray | None:
        """A voxel of a random class of case `index` for a class-centred crop, or None."""
        if self.class_share <= 0 or float(torch.rand((), generator=generator)) >= self.class_share:
            return None
        locations = self.locations[index]
        if not locations:
            return None
        voxels = locations[sorted(locations)[_randint(generator, len(locations))]]
        return voxels[_randint(generator, len(voxels))]

    def draw(self, patch_zyx: Triple, generator: torch.Generator, augment: bool = True) -> CropDraw:
        """One crop's random choices, drawn in `random_crop`'s order (case first, as CropStream)."""
        if self.case_cdf is None:
            index = _randint(generator, len(self.images))
        else:  # weighted (sampling.labeled_case_weights), from the same CPU generator
            index = weighted_index(self.case_cdf, float(torch.rand((), generator=generator)))
        center = self._center(index, generator)
        k = _randint(generator, 4) if augment else 0
        pz, py, px = patch_zyx
        window = (pz, px, py) if k % 2 else (pz, py, px)
        shape = tuple(self.images[index].shape[-3:])
        if center is not None:
            starts = centred_starts(center, shape, window)
        else:
            starts = []
            for n, w in zip(shape, window, strict=True):
                lo, hi = crop_bounds(n, w)
                starts.append(_randint(generator, hi - lo + 1) + lo)
        flip_axis = 1 + _randint(generator, 2) if augment else None
        return CropDraw(index, k, (starts[0], starts[1], starts[2]), window, flip_axis)

    def crop(self, draw: CropDraw, with_labels: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (D, H, W) image crop and, when asked for, its label crop, for one draw."""
        args = (draw.starts, draw.window, draw.k, draw.flip_axis)
        image = crop_on_device(self.images[draw.index], *args, fill=0.0)
        label = self.labels[draw.index] if with_labels else None
        return image, None if label is None else crop_on_device(label, *args, fill=0)

    def sample(
        self,
        patch_zyx: Triple,
        batch_size: int,
        generator: torch.Generator,
        augment: bool = True,
        with_labels: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: images (N, C, D, H, W) float32 (C = 1 for a single channel) and labels
        (N, D, H, W) int64.

        Without labels the second tensor is empty, shape (N, 0), like the DataLoader path's.
        """
        if with_labels and not self.has_labels:
            raise DataError("labels were asked for but these cases were loaded without them")
        images, labels = [], []
        for _ in range(batch_size):
            image, label = self.crop(self.draw(patch_zyx, generator, augment), with_labels)
            images.append(image)
            if label is not None:
                labels.append(label)
        x = torch.stack(images)
        x = x[:, None] if x.dim() == 4 else x
        if with_labels:
            y = torch.stack(labels).long()
        else:
            y = torch.zeros((batch_size, 0), dtype=torch.int64, device=self.device)
        return x, y

    def batches(
        self,
        patch_zyx: Triple,
        batch_size: int,
        seed: int,
        augment: bool = True,
        with_labels: bool = True,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless batches from a generator seeded with `seed` (same seed, same crops)."""
        generator = torch.Generator(device="cpu").manual_seed(seed)
        while True:
            yield self.sample(patch_zyx, batch_size, generator, augment, with_labels)


@dataclass
class HeldCases:
    """A run's labelled and unlabelled cases held on its device (what `Trainer` streams from)."""

    labeled: DeviceCases
    unlabeled: DeviceCases | None

    @classmethod
    def load_if_fits(
        cls,
        labeled: Sequence[CachedCase],
        unlabeled: Sequence[CachedCase],
        device: torch.device,
        setting: str = "auto",
        class_share: float = 0.0,
        case_weights: Sequence[float] | None = None,
    ) -> HeldCases | None:
        """Load the cases onto `device` when `should_hold_on_device` says so, else None."""
        if not should_hold_on_device([*labeled, *unlabeled], device, setting):
            return None
        held_unlabeled = DeviceCases(unlabeled, device, with_labels=False) if unlabeled else None
        held_labeled = DeviceCases(labeled, device, class_share=class_share, case_weights=case_weights)
        return cls(held_labeled, held_unlabeled)

    def streams(
        self,
        patch_zyx: Triple,
        labeled_batch: int,
        unlabeled_batch: int | None,
        seeds: tuple[int, int],
        augment: bool = True,
    ) -> dict[str, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        """{"labeled": ..., and "unlabeled": ... when `unlabeled_batch` is given} batch streams."""
        out = {"labeled": self.labeled.batches(patch_zyx, labeled_batch, seeds[0], augment)}
        if unlabeled_batch is not None:
            if self.unlabeled is None:
                raise DataError("an unlabelled stream was asked for but there are no unlabelled cases")
            out["unlabeled"] = self.unlabeled.batches(
                patch_zyx, unlabeled_batch, seeds[1], augment, with_labels=False
            )
        return out


def _randint(generator: torch.Generator, high: int) -> int:
    """A uniform integer in [0, high), from the CPU generator (no device synchronisation)."""
    return int(torch.randint(high, (), generator=generator))


def _to_device(array: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # One read of the memory-mapped file into a private (writable) host copy, then one transfer.
    host = torch.from_numpy(np.array(array, copy=True)).to(dtype)
    return host.to(device)
