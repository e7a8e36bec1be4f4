"""A case's channels: several co-registered images of one case (T2 and ADC, CT and PET, ...).

A case holds its channels as separate files (`Case.channels`: nnU-Net's ``<ID>_0000``,
``<ID>_0001`` ..., a manifest's ``channels`` list, or volumes given one by one through the API) or
as one file with a channel axis (a 4D NIfTI, a NRRD/MHA with several components per voxel).

Every channel must lie on channel 0's physical grid (size, spacing, origin, direction; within
`check_same_grid`'s tolerance). A channel on another grid is refused with the case, the channel
and the difference, unless the caller asks for it to be resampled onto channel 0's grid, naming
the interpolation (`RESAMPLING`). Channel 0's grid is the case's grid: its label lies on it and
predictions are written on it.

In memory a case with several channels is one SimpleITK vector image, one float32 component per
channel, carrying channel 0's geometry (`read_case_image`); a single-channel case is the scalar
image `read_image` returns, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from ..common.errors import DataError
from .io import MAX_CHANNELS, Case, read_image, read_image_channels
from .validation import check_same_grid

__all__ = [
    "RESAMPLING",
    "align_channels",
    "case_channel_count",
    "channel_mismatch",
    "channel_count",
    "compose_channels",
    "image_channels",
    "read_case_channels",
    "read_case_image",
]

# Interpolations a channel may be resampled with onto channel 0's grid (only when asked for), by
# SimpleITK attribute name: looked up at use, so importing this module touches nothing in SimpleITK
# (the speed benchmark runs without it on the lent GPU machines).
RESAMPLING = {"linear": "sitkLinear", "nearest": "sitkNearestNeighbor", "bspline": "sitkBSpline"}


def channel_count(image: sitk.Image) -> int:
    """Channels of an image in memory: its components per voxel (1 for a scalar image)."""
    return int(image.GetNumberOfComponentsPerPixel())


def image_channels(image: sitk.Image) -> list[sitk.Image]:
    """The channels of an image in memory, each a scalar 3D image (a scalar image is its own)."""
    n = channel_count(image)
    return [image] if n == 1 else [sitk.VectorIndexSelectionCast(image, k) for k in range(n)]


def case_channel_count(case: Case) -> int:
    """How many channels `case` has, from its file names or its file's header (no voxel read)."""
    if case.channels:
        return len(case.channels)
    path = Path(case.image)
    if path.is_dir():
        return 1  # a DICOM series is one volume
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return 1  # reading the image reports what is wrong with it
    if reader.GetDimension() == 4:
        return int(reader.GetSize()[3])
    return int(reader.GetNumberOfComponents())


def align_channels(
    channels: Sequence[sitk.Image],
    where: str,
    names: Sequence[str] | None = None,
    resampling: str | None = None,
) -> list[sitk.Image]:
    """`channels` on channel 0's grid, each carrying channel 0's geometry exactly.

    A channel off that grid raises DataError naming `where` (the case), the channel and each
    difference, unless `resampling` ("linear", "nearest" or "bspline") asks for it to be
    resampled onto channel 0's grid with that interpolation."""
    if resampling is not None and resampling not in RESAMPLING:
        raise DataError(f"channel resampling {resampling!r}: use one of {', '.join(RESAMPLING)} (or none).")
    if not channels:
        raise DataError(f"{where}: no channels.")
    if len(channels) > MAX_CHANNELS:
        raise DataError(f"{where}: {len(channels)} channels; at most {MAX_CHANNELS} are supported.")
    names = list(names) if names is not None else [f"channel {k}" for k in range(len(channels))]
    first = channels[0]
    out = [first]
    for k, channel in enumerate(channels[1:], start=1):
        diffs = check_same_grid(channel, first, names=(names[k], names[0]))
        if diffs and resampling is None:
            raise DataError(
                f"{where}: {names[k]} is not on {names[0]}'s grid: " + "; ".join(diffs) + ". The channels "
                "of a case must be co-registered on one grid: resample it onto the first channel's grid "
                "(or ask for that here: --resample-channels linear / resample_channels='linear')."
            )
        if diffs:
            channel = sitk.Resample(
                channel,
                first,
                sitk.Transform(),
                getattr(sitk, RESAMPLING[resampling]),
                0.0,
                channel.GetPixelID(),
            )
        else:
            channel = sitk.Image(channel)  # a copy: the geometry set below is not the caller's
            channel.CopyInformation(first)  # within tolerance: make it exact for composing
        out.append(channel)
    return out


def compose_channels(channels: Sequence[sitk.Image]) -> sitk.Image:
    """One image from aligned channels: the channel itself for one, else a float32 vector image."""
    if len(channels) == 1:
        return channels[0]
    return sitk.Compose([sitk.Cast(c, sitk.sitkFloat32) for c in channels])


def read_case_channels(
    case: Case, resampling: str | None = None, max_voxels: int | None = None
) -> list[sitk.Image]:
    """The case's channels, read and checked (see `align_channels`), as scalar 3D images."""
    if case.channels:
        channels = [read_image(path, max_voxels=max_voxels) for path in case.channels]
        names = [f"channel {k} ({path.name})" for k, path in enumerate(case.channels)]
    else:
        channels = read_image_channels(case.image, max_voxels=max_voxels)
        names = [f"channel {k}" for k in range(len(channels))]
    return align_channels(channels, f"case {case.case_id}", names, resampling)


def read_case_image(
    case: Case,
    resampling: str | None = None,
    expected_channels: int | None = None,
    channel_names: Sequence[str] = (),
) -> sitk.Image:
    """The case's scan: a scalar image for one channel, a float32 vector image for several.

    With `expected_channels`, a case with another number of channels is refused, naming it."""
    channels = read_case_channels(case, resampling)
    if expected_channels is not None and len(channels) != expected_channels:
        raise DataError(
            channel_mismatch(f"case {case.case_id}", len(channels), expected_channels, channel_names)
        )
    return compose_channels(channels)


def channel_mismatch(where: str, found: int, expected: int, names: Sequence[str] = ()) -> str:
    """The message for an image whose channel count is not the model's or the cohort's."""
    named = f" ({', '.join(names)})" if names else ""
    return (
        f"{where} has {found} channel(s), but the model and the other cases have {expected}{named}: "
        "every case needs the same channels, in the same order."
    )
