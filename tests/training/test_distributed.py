"""torch.distributed reciprocal training: 2 CPU processes (gloo) against one process.

The ranks are real processes (``torch.multiprocessing`` spawn, file rendezvous in a
temporary folder). Each spawn pays a PyTorch import per process, so the tests do several
checks per spawn.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from reciprocalseg.cli import main as cli
from reciprocalseg.common.errors import CancelledError, DataError, TrainingError
from reciprocalseg.config import TrainConfig, make_config
from reciprocalseg.data.io import Case
from reciprocalseg.data.phantom import write_phantom_cohort
from reciprocalseg.model.vnet import build_model
from reciprocalseg.training.distributed import (
    AllReduceMean,
    DistContext,
    DistributedTrainer,
    _buckets,
    local_backend,
    run_ranks,
)
from reciprocalseg.training.events import read_events
from reciprocalseg.training.reciprocal import ReciprocalStep, supervised_step
from reciprocalseg.training.runner import CancelToken, train

LR, B = 0.01, 1  # per-rank batch b; the single process gets 2b
# float64 checks the arithmetic to round-off (~1e-14). In float32 this tiny V-Net is ill-conditioned
# (16^3 crops leave one voxel at the bottom, where each group norm normalises 4 numbers and magnifies
# round-off: a batch of 1 and one of 2 already differ by ~1e-3 in g_u). The float32 Trainer runs
# below check that the ranks keep identical networks.
DTYPE = torch.float64
MODES = ("fast", "reference")
FORK = {"start_method": "fork"}  # CPU ranks start at once; the CLI test below spawns, as training does


@pytest.fixture(autouse=True)
def _float32_one_thread() -> Iterator[None]:
    """Another test module sets float64 as the default dtype at import; one thread beside the ranks."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


# -- one step: 2 ranks x batch b == 1 process x batch 2b -----------------------------------
def _pair(seed: int, dtype: torch.dtype = DTYPE) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    teacher = build_model(2, n_filters=4, normalization="groupnorm", dropout=False).to(dtype)
    student = build_model(2, n_filters=4, normalization="groupnorm", dropout=False).to(dtype)
    return teacher, student


def _data(seed: int, n: int, dtype: torch.dtype = DTYPE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x_l = torch.randn(n, 1, 16, 16, 16, generator=g, dtype=dtype)
    y_l = (x_l[:, 0] > 0.3).long()
    x_u = torch.randn(n, 1, 16, 16, 16, generator=g, dtype=dtype)
    return x_l, y_l, x_u


def _sgd(model: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _one_step(mode: str, rank: int | None, sync: AllReduceMean | None) -> dict[str, Any]:
    """One reciprocal step on fixed samples: rank r takes rows r*b:(r+1)*b, no rank (None) all 2b."""
    teacher, student = _pair(0)
    rows = slice(0, 2 * B) if rank is None else slice(rank * B, (rank + 1) * B)
    step = ReciprocalStep(teacher, student, _sgd(teacher), _sgd(student), mode=mode, grad_sync=sync)
    x_l, y_l, x_u = _data(100, 2 * B)
    h = step(x_l[rows], y_l[rows], x_u[rows], LR).h
    return {"h": h, "teacher": _flat(teacher), "student": _flat(student)}


def _step_worker(ctx: DistContext) -> dict[str, Any]:
    sync = AllReduceMean()
    out: dict[str, Any] = {mode: _one_step(mode, ctx.rank, sync) for mode in MODES}
    # Small buckets, two dtypes: every tensor comes back as the mean over the ranks.
    tensors = [torch.full((5,), float(ctx.rank + i)) for i in range(3)] + [
        torch.full((2, 2), ctx.rank + 1.0).double()
    ]
    AllReduceMean(bucket_bytes=24)(tensors)
    out["averaged"] = tensors
    # The supervised step (CE + Dice) with averaged gradients keeps the ranks' networks identical.
    torch.manual_seed(0)
    model = build_model(2, n_filters=4, normalization="groupnorm", dropout=False).to(DTYPE)
    x_l, y_l, _ = _data(7 + ctx.rank, B)
    supervised_step(model, _sgd(model), x_l, y_l, grad_sync=sync)
    out["supervised"] = _flat(model)
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_two_ranks_step_as_one_process_with_twice_the_batch() -> None:
    ranks = run_ranks(_step_worker, 2, "gloo", **FORK)
    for mode in MODES:
        r0, r1, single = ranks[0][mode], ranks[1][mode], _one_step(mode, None, None)
        # h is the same number on both ranks (averaged g_u and g_l), and the single process's h.
        assert r0["h"] == r1["h"] and abs(single["h"]) > 0
        assert r0["h"] == pytest.approx(single["h"], rel=1e-9), mode
        for net, start in zip(("teacher", "student"), (_flat(m) for m in _pair(0)), strict=True):
            assert torch.equal(r0[net], r1[net]), f"{mode} {net}: the ranks differ"
            assert _rel(r0[net], single[net]) < 1e-5, (mode, net)
            # The update itself (not only the parameters, which barely move in one step) agrees.
            assert _rel(r0[net] - start, single[net] - start) < 1e-9, (mode, net)
    for r in ranks:
        for i, t in enumerate(r["averaged"][:3]):
            torch.testing.assert_close(t, torch.full((5,), 0.5 + i))
        torch.testing.assert_close(r["averaged"][3], torch.full((2, 2), 1.5, dtype=torch.float64))
    assert torch.equal(ranks[0]["supervised"], ranks[1]["supervised"])


def test_buckets_keep_order_and_split_by_size_and_dtype() -> None:
    a, b, c = torch.zeros(4), torch.zeros(4), torch.zeros(4, dtype=torch.float64)
    big = torch.zeros(100)
    buckets = list(_buckets([a, b, c, big], bucket_bytes=32))
    assert [[id(t) for t in bucket] for bucket in buckets] == [[id(a), id(b)], [id(big)], [id(c)]]


def _failing_worker(ctx: DistContext, kind: str) -> None:
    if kind == "cancel":  # every rank stops at the same point
        raise CancelledError("cancelled at iteration 3")
    if ctx.rank == 1:
        raise DataError("case x: unreadable")
    ctx.barrier()  # rank 0 waits for a rank that has failed: the launcher must stop it


def test_rank_errors_reach_the_launcher() -> None:
    with pytest.raises(CancelledError, match="iteration 3"):
        run_ranks(_failing_worker, 2, "gloo", ("cancel",), **FORK)
    with pytest.raises(DataError, match="unreadable"):
        run_ranks(_failing_worker, 2, "gloo", ("error",), grace_s=2, **FORK)


# -- the real Trainer: 2 ranks, cancel, resume with 1 process --------------------------------
def _tiny_config(reciprocal: int = 4) -> TrainConfig:
    return make_config(
        "demo",
        n_classes=2,
        patch_size=(16, 16, 16),
        n_filters=4,
        normalization="groupnorm",
        dropout=False,
        supervised_iterations=2,
        reciprocal_iterations=reciprocal,
        batch_labeled=1,
        batch_unlabeled=1,
        supervised_batch=1,
        checkpoint_every=1000,
        num_workers=0,
        device="cpu",
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Case], list[Case]]:
    root = tmp_path_factory.mktemp("cohort")
    labeled = write_phantom_cohort(root / "labeled", 2, seed=1, shape_zyx=(32, 32, 32))
    images = write_phantom_cohort(root / "unlabeled", 2, seed=2, shape_zyx=(32, 32, 32))
    unlabeled = [Case(f"u_{c.case_id}", c.image, None) for c in images]
    return labeled, unlabeled


def _train_worker(
    ctx: DistContext,
    config: TrainConfig,
    labeled: list[Case],
    unlabeled: list[Case],
    run_dir: Path,
    stop: int,
) -> dict[str, Any]:
    def cancel_at(event: dict[str, Any]) -> None:  # rank 0's listener; the ranks agree on the iteration
        if event["event"] == "progress" and event["phase"] == "reciprocal" and event["iteration"] == stop:
            (run_dir / "CANCEL").touch()

    trainer = DistributedTrainer(
        config, labeled, unlabeled, run_dir, ctx, [cancel_at], CancelToken(run_dir / "CANCEL")
    )
    try:
        trainer.run()
    except CancelledError:
        pass
    crops = trainer._streams("reciprocal", 0)
    return {
        "teacher": _flat(trainer.teacher),
        "student": _flat(trainer.student),
        "crop": crops.next("unlabeled")[0],
    }


def test_two_ranks_train_write_once_and_resume_with_one_process(
    tmp_path: Path, cohort: tuple[list[Case], list[Case]]
) -> None:
    labeled, unlabeled = cohort
    config, run_dir = _tiny_config(), tmp_path / "run"
    ranks = run_ranks(_train_worker, 2, "gloo", (config, labeled, unlabeled, run_dir, 2), **FORK)

    # The same networks on both ranks; different crops (streams seeded by rank).
    for net in ("teacher", "student"):
        assert torch.equal(ranks[0][net], ranks[1][net])
    assert not torch.equal(ranks[0]["crop"], ranks[1]["crop"])

    # Rank 0 alone wrote: one checkpoint set, one copy of every event.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "latest.pt",
        "student.pt",
        "teacher.pt",
    ]
    checkpoint = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert (checkpoint["phase"], checkpoint["iteration"]) == ("reciprocal", 2)
    torch.testing.assert_close(
        torch.cat([v.flatten() for k, v in checkpoint["teacher"].items() if "num_batches" not in k]),
        ranks[0]["teacher"],
    )
    events = read_events(run_dir / "events.jsonl")
    progress = [(e["phase"], e["iteration"]) for e in events if e["event"] == "progress"]
    assert progress == [("supervised", 1), ("supervised", 2), ("reciprocal", 1), ("reciprocal", 2)]
    assert [e["event"] for e in events].count("cancelled") == 1
    assert "2 ranks (gloo)" in next(e for e in events if e["event"] == "progress")["device"]
    assert (run_dir / "supervised.pt").exists() and not (run_dir / "done.json").exists()

    # Resume with a single process (a different world size) to the end.
    (run_dir / "CANCEL").unlink()
    result = train(config, labeled, unlabeled, run_dir)
    assert result.teacher.exists() and (run_dir / "done.json").exists()
    events = read_events(run_dir / "events.jsonl")
    resumed = [e for e in events if e["event"] == "resumed"]
    assert [(e["phase"], e["iteration"]) for e in resumed] == [("reciprocal", 2)]
    progress = [(e["phase"], e["iteration"]) for e in events if e["event"] == "progress"]
    assert progress[-2:] == [("reciprocal", 3), ("reciprocal", 4)]


# -- the command line ----------------------------------------------------------------------
def _manifest(tmp_path: Path, labeled: list[Case], unlabeled: list[Case]) -> Path:
    path = tmp_path / "cases.json"
    doc = {
        "labeled": [{"id": c.case_id, "image": str(c.image), "label": str(c.label)} for c in labeled],
        "unlabeled": [{"id": c.case_id, "image": str(c.image)} for c in unlabeled],
    }
    path.write_text(json.dumps(doc))
    return path


def _train_args(manifest: Path, out: Path) -> list[str]:
    return [
        "train", "--manifest", str(manifest), "--out", str(out), "--preset", "demo", "--n-classes", "2",
        "--patch-size", "16", "16", "16", "--n-filters", "4", "--normalization", "groupnorm",
        "--supervised-iterations", "1", "--iterations", "2", "--num-workers", "0", "--json",
    ]  # fmt: skip


def test_cli_gpus_with_cpu_device_runs_processes(
    tmp_path: Path, cohort: tuple[list[Case], list[Case]], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = cli.main([*_train_args(_manifest(tmp_path, *cohort), out), "--gpus", "2", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert (out / "done.json").exists() and (out / "teacher.pt").exists() and (out / "student.pt").exists()
    events = read_events(out / "events.jsonl")
    assert [e["event"] for e in events].count("done") == 1
    assert [e["iteration"] for e in events if e["event"] == "progress"] == [1, 1, 2]


def test_gpus_without_enough_gpus_is_a_clear_error(
    tmp_path: Path, cohort: tuple[list[Case], list[Case]], capsys: pytest.CaptureFixture[str]
) -> None:
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    n = max(found + 1, 2)
    with pytest.raises(TrainingError, match=f"needs {n} CUDA GPUs but this machine has {found}"):
        local_backend(n, "auto")
    with pytest.raises(TrainingError, match="CUDA_VISIBLE_DEVICES"):
        local_backend(2, "cuda:1")
    assert local_backend(2, "cpu") == "gloo"
    args = [*_train_args(_manifest(tmp_path, *cohort), tmp_path / "run"), "--gpus", str(n)]
    assert cli.main(args) == cli.EXIT_ERROR
    assert "--device cpu" in capsys.readouterr().err


def test_sync_batchnorm_is_refused_where_it_cannot_work() -> None:
    ctx = DistContext(0, 2, 0, "gloo", torch.device("cpu"))
    config = _tiny_config()
    with pytest.raises(TrainingError, match="batch norm"):
        DistributedTrainer(config, [], [], Path("unused"), ctx, sync_batchnorm=True)
    with pytest.raises(TrainingError, match="needs GPUs"):
        DistributedTrainer(
            config.replace(normalization="batchnorm"), [], [], Path("x"), ctx, sync_batchnorm=True
        )
