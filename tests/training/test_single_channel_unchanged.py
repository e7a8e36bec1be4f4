"""Single-channel training and inference are unchanged bit for bit by multi-channel support (issue 24).

A tiny run on a fixed phantom cohort with a fixed seed, on one CPU thread: the SHA-256 of the teacher's
and the student's weights and of a predicted label map must equal what the code before multi-channel
support produced (commit 2849534, recorded on the 2-core AMD EPYC VM with torch 2.13.0+cpu). Floating
point kernels may round differently on another CPU family or torch build, so the figures are only
compared on the torch version they were recorded with.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from reciprocalseg.config import make_config
from reciprocalseg.data.io import Case, read_image
from reciprocalseg.data.phantom import write_phantom_cohort
from reciprocalseg.inference.sliding_window import load_model, predict_image
from reciprocalseg.training.checkpoint import load_model_file
from reciprocalseg.training.runner import train

RECORDED_TORCH = "2.13.0+cpu"
RECORDED = {
    "off": {
        "teacher": "0c014b4a3ee23aa98a6117f9a2ed8a701a87dff6435cc6710363cf2df6edbd3e",
        "student": "8c186d7d6470ac121c96a56d0275f789aca6930ea8458d1b368516d1520efa3d",
        "prediction": "0ac9969ffbe447275099200487f49dde7d81f7abee384e1e3376a9047dde48fd",
    },
    "on": {
        "teacher": "aca002df3925270f0b22a60a8a104504ee4310efa148ae2bbeea67bf71fa6b66",
        "student": "7d534c6e1b088d055364565421d54a1df78f7b604cf4c8de1a63666215294e90",
        "prediction": "f7d0dcbf27606353b74616f1a4d18424e43ef6587b3beaacb8e00fd7ab939b6a",
    },
}


def weights_digest(path: Path) -> str:
    state = load_model_file(path)["state_dict"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_digests(tmp: Path, data_on_gpu: str = "off") -> dict[str, str]:
    """Digests of a 3 + 3 iteration run on a phantom cohort (seeded), and of one prediction; crops
    streamed from the disk cache (`data_on_gpu` "off") or cut from cases held in memory ("on")."""
    cases = write_phantom_cohort(tmp / "cohort", 4, seed=5, shape_zyx=(24, 32, 32))
    labeled, unlabeled = cases[:2], [Case(c.case_id, c.image, None) for c in cases[2:]]
    config = make_config(
        "demo",
        patch_size=(16, 16, 16),
        n_filters=4,
        supervised_iterations=3,
        reciprocal_iterations=3,
        supervised_batch=2,
        device="cpu",
        data_on_gpu=data_on_gpu,
        seed=11,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(config, labeled, unlabeled, tmp / "run")
        labels = predict_image(load_model(result.student, "cpu"), read_image(cases[3].image)).labels
    finally:
        torch.set_num_threads(threads)
    array = np.ascontiguousarray(sitk.GetArrayFromImage(labels))
    return {
        "teacher": weights_digest(result.teacher),
        "student": weights_digest(result.student),
        "prediction": hashlib.sha256(array.tobytes()).hexdigest(),
    }


@pytest.mark.parametrize("data_on_gpu", ["off", "on"])
def test_single_channel_run_is_bit_identical(tmp_path: Path, data_on_gpu: str) -> None:
    if torch.__version__ != RECORDED_TORCH:
        pytest.skip(f"digests recorded with torch {RECORDED_TORCH}; this is torch {torch.__version__}")
    assert run_digests(tmp_path, data_on_gpu) == RECORDED[data_on_gpu]


if __name__ == "__main__":  # print the digests of the code at hand (how RECORDED was made)
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for setting in ("off", "on"):
            print(setting, run_digests(Path(folder) / setting, setting), file=sys.stdout)
