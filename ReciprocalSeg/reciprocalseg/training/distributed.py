"""Reciprocal training on several GPUs (or CPU processes) with torch.distributed.

Data parallel, PyTorch's own engine: every rank holds the same teacher and student,
samples its own labelled and unlabelled crops (streams seeded by rank), and the
gradients that enter the update are averaged over the ranks with ``all_reduce``:

- the student's pseudo-label gradient g_u, before the student's step;
- the student's labelled gradient g_l, before h = lr * <g_l, g_u> (so h is the same
  number on every rank);
- the teacher's gradient h * g_u(teacher) + g_l(teacher), before the teacher's step.

Every loss is a mean over the rank's batch, so with the same per-rank batch b on each
of N ranks the average of the per-rank gradients is the gradient over all N x b crops:
N ranks with batch b take the same step as one process with batch N x b (cross-entropy
terms exactly, up to round-off; batch-norm statistics and the soft Dice of the supervised
recipe are per rank unless ``--sync-bn``, which converts batch norm to SyncBatchNorm).

Only rank 0 writes the run folder (config, events, checkpoints, models); the others wait
at a barrier while it writes. A checkpoint holds nothing that belongs to one rank, so a
run resumes with any number of processes, one included (``reciprocalseg train`` without
``--gpus``). The run folder must be on a file system that every rank can read.

Launch:

- ``reciprocalseg train --gpus N ...``: N processes on this machine, one GPU each (NCCL);
  ``--gpus N --device cpu`` runs N CPU processes (gloo), for tests.
- ``torchrun --nproc-per-node N [--nnodes M ...] -m reciprocalseg.training.distributed train ...``:
  the same ``train`` arguments, one process per GPU, on one or several nodes.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ..common.device import describe_device
from ..common.errors import EXIT_CANCELLED, EXIT_ERROR, CancelledError, ReciprocalSegError, TrainingError
from ..config import TrainConfig
from ..data.io import Case
from .command import request_from_args, train_parser
from .events import EventLog, Listener
from .progress import progress_listener
from .request import TrainRequest, print_result, train_in_process
from .runner import PHASES, CancelToken, RunResult, Trainer, _seed

__all__ = [
    "AllReduceMean",
    "DistContext",
    "DistributedTrainer",
    "init_distributed",
    "launch_local",
    "local_backend",
    "main",
    "run_ranks",
    "shutdown",
]

DEFAULT_BUCKET_BYTES = 25 * 2**20  # as DistributedDataParallel's default bucket


# -- process group -----------------------------------------------------------------------
@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the process group, and its device."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (on NCCL, through this rank's own GPU)."""
        if self.world_size == 1:
            return
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()


def init_distributed(
    backend: str,
    rank: int | None = None,
    world_size: int | None = None,
    local_rank: int | None = None,
    init_method: str | None = None,
) -> DistContext:
    """Join the process group; rank, world size and local rank default to torchrun's variables.

    ``backend`` is ``"nccl"`` (one GPU per process: ``cuda:local_rank``) or ``"gloo"`` (CPU).
    """
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    local_rank = int(os.environ.get("LOCAL_RANK", rank)) if local_rank is None else local_rank
    if backend == "nccl":
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise TrainingError(
                f"local rank {local_rank} needs GPU cuda:{local_rank}, but this machine has {found} "
                "CUDA GPUs; "
                "start at most one process per GPU (torchrun --nproc-per-node), or use --device cpu"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    elif backend == "gloo":
        device = torch.device("cpu")
    else:
        raise TrainingError(
            f"unknown torch.distributed backend {backend!r}: use 'nccl' (GPUs) or 'gloo' (CPU)"
        )
    if not dist.is_initialized():
        dist.init_process_group(
            backend, init_method=init_method or "env://", rank=rank, world_size=world_size
        )
    return DistContext(rank, world_size, local_rank, backend, device)


def shutdown() -> None:
    """Leave the process group (if joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_backend(n_processes: int, device: str | None) -> str:
    """The backend for ``n_processes`` on this machine: gloo for ``cpu``, else NCCL on N GPUs.

    Raises a clear error where the machine has fewer GPUs than asked for.
    """
    if n_processes < 1:
        raise TrainingError(f"--gpus {n_processes}: give a number of processes >= 1")
    device = device or "auto"
    if device == "cpu":
        return "gloo"
    if device not in ("auto", "cuda"):
        raise TrainingError(
            f"--gpus {n_processes} uses cuda:0..cuda:{n_processes - 1}; --device {device} cannot be combined "
            "with it (choose the GPUs with CUDA_VISIBLE_DEVICES, or --device cpu for CPU processes)"
        )
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < n_processes:
        raise TrainingError(
            f"--gpus {n_processes} needs {n_processes} CUDA GPUs but this machine has {found}; "
            f"use --gpus {max(found, 1)}, or --device cpu to run {n_processes} CPU processes "
            "(gloo, for tests)"
        )
    if not dist.is_nccl_available():
        raise TrainingError("this PyTorch build has no NCCL; multi-GPU training needs a CUDA build with NCCL")
    return "nccl"


# -- gradient averaging ------------------------------------------------------------------
def _buckets(tensors: Sequence[torch.Tensor], bucket_bytes: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive tensors of one device and dtype, at most ``bucket_bytes`` per bucket (or one tensor)."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for t in group:
            nbytes = t.numel() * t.element_size()
            if bucket and size + nbytes > bucket_bytes:
                yield bucket
                bucket, size = [], 0
            bucket.append(t)
            size += nbytes
        if bucket:
            yield bucket


class AllReduceMean:
    """Average a list of tensors over the ranks, in place, a few flat buckets at a time.

    The ``grad_sync`` of `ReciprocalStep` and `supervised_step`: one ``all_reduce`` per
    bucket of up to ``bucket_bytes`` (tensors of one device and dtype, flattened into one
    buffer), then each tensor is overwritten with its average.
    """

    def __init__(self, group: Any = None, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        self.group, self.bucket_bytes = group, bucket_bytes

    def __call__(self, tensors: Sequence[torch.Tensor]) -> None:
        world = dist.get_world_size(self.group)
        if world == 1 or not tensors:
            return
        for bucket in _buckets(tensors, self.bucket_bytes):
            flat = _flatten_dense_tensors(bucket)
            dist.all_reduce(flat, group=self.group)  # SUM: gloo has no AVG
            flat.div_(world)
            for t, averaged in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
                t.copy_(averaged)


def _broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


def _average_buffers(module: nn.Module, sync: AllReduceMean) -> None:
    """Average floating-point buffers (batch-norm running statistics) over the ranks."""
    sync([b for b in module.buffers() if b.is_floating_point()])


# -- the trainer -------------------------------------------------------------------------
class AgreedCancel(CancelToken):
    """A cancel token that every rank reads the same way: cancelled when any rank's token is.

    Each read is a collective (an ``all_reduce`` of one number), so the training loop, which
    reads it once per iteration on every rank, stops at the same iteration everywhere.
    """

    def __init__(self, local: CancelToken, ctx: DistContext) -> None:
        super().__init__(local.flag_file)
        self.local, self.ctx = local, ctx

    def cancel(self) -> None:
        self.local.cancel()

    @property
    def requested(self) -> bool:
        flag = torch.tensor([1.0 if self.local.requested else 0.0], device=self.ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def install_signal_handlers(self) -> None:
        self.local.install_signal_handlers()


class DistributedTrainer(Trainer):
    """`Trainer` for one rank of a process group: averaged gradients, rank-0 files.

    Create it on every rank with the same arguments (after `init_distributed`); `run()`
    then trains and returns the same `RunResult` on every rank.
    """

    def __init__(
        self,
        config: TrainConfig,
        labeled: Sequence[Case],
        unlabeled: Sequence[Case],
        run_dir: Path,
        ctx: DistContext,
        listeners: list[Listener] | None = None,
        cancel: CancelToken | None = None,
        warm_start: Path | None = None,
        cache_dir: Path | None = None,
        sync_batchnorm: bool = False,
        clock: Callable[[], float] | None = None,
        started: float | None = None,
    ) -> None:
        if sync_batchnorm and config.normalization != "batchnorm":
            raise TrainingError(
                f"--sync-bn synchronises batch norm, but this run uses {config.normalization}; drop --sync-bn"
            )
        if sync_batchnorm and ctx.device.type == "cpu" and ctx.world_size > 1:
            raise TrainingError(
                "--sync-bn needs GPUs (SyncBatchNorm has no CPU implementation); drop it on CPU"
            )
        self.dist, self.sync_batchnorm = ctx, sync_batchnorm
        # Every rank trains on its own device; config.json keeps rank 0's.
        super().__init__(
            config.replace(device=str(ctx.device)),
            labeled,
            unlabeled,
            run_dir,
            listeners if ctx.is_main else None,
            cancel,
            warm_start,
            cache_dir,
            clock,
            started,
        )
        if not ctx.is_main:  # rank 0 writes the events; the others keep theirs to themselves
            self.events.close()
            self.events = EventLog(None)
        self.rank = ctx.rank
        self.grad_sync = AllReduceMean()
        self.cancel = AgreedCancel(self.cancel, ctx)
        ranks = f"{ctx.world_size} rank{'s' if ctx.world_size > 1 else ''}"
        self.device_name = f"{describe_device(self.device)} x {ranks} ({ctx.backend})"

    # Rank 0 writes, the others wait: run files, preprocessing cache, checkpoints, models.
    def _write_run_files(self) -> None:
        if self.dist.is_main:
            super()._write_run_files()
        self.dist.barrier()

    def _prepare_data(self) -> None:
        if self.dist.is_main:
            super()._prepare_data()
        self.dist.barrier()
        if not self.dist.is_main:  # reads rank 0's cache
            super()._prepare_data()

    def _new_model(self) -> nn.Module:
        model = super()._new_model()
        if self.sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def _restore(self) -> tuple[str, int]:
        phase, iteration = super()._restore()
        # The same networks on every rank, whatever each rank read (seeded init, warm start, checkpoint).
        for model in (self.teacher, self.student):
            _broadcast_module(model)
        # Per-rank random state (dropout), derived from the seed, the rank and the position, so a
        # resumed run does not depend on the world size that wrote the checkpoint.
        torch.manual_seed(_seed([self.config.seed, self.dist.rank, PHASES.index(phase), iteration], 2))
        return phase, iteration

    def _average_statistics(self) -> None:
        """Batch-norm running statistics are per rank (without SyncBatchNorm): save their average."""
        modules = [self.teacher, self.student]
        if self.student_ema is not None:
            modules.append(self.student_ema)
        for module in modules:
            _average_buffers(module, self.grad_sync)

    def _checkpoint(self, phase: str, iteration: int) -> None:
        self._average_statistics()
        if self.dist.is_main:
            super()._checkpoint(phase, iteration)
        else:
            self.pace.pause()
        self.dist.barrier()

    def _save_supervised(self) -> None:
        self._average_statistics()
        if self.dist.is_main:
            super()._save_supervised()
        self.dist.barrier()

    def _finish(self, seconds: float) -> RunResult:
        self._average_statistics()
        result = super()._finish(seconds) if self.dist.is_main else None
        self.dist.barrier()
        return result if result is not None else self._result(seconds)


# -- running ranks -----------------------------------------------------------------------
def _rank_entry(
    local_rank: int,
    fn: Callable[..., Any],
    world_size: int,
    backend: str,
    init_method: str,
    result_dir: str,
    fn_args: tuple[Any, ...],
) -> None:
    """One spawned process: join the group, run ``fn(ctx, *fn_args)``, save its result or error."""
    out = Path(result_dir) / f"rank{local_rank}.pt"
    if backend == "gloo":  # N CPU processes share the cores instead of each taking all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    failed = False
    try:
        ctx = init_distributed(backend, local_rank, world_size, local_rank, init_method)
        torch.save({"result": fn(ctx, *fn_args)}, out)
    except CancelledError as exc:  # every rank stops at the same iteration: not a failure
        torch.save({"error": exc, "traceback": traceback.format_exc()}, out)
    except BaseException as exc:
        failed = True
        error = exc if isinstance(exc, ReciprocalSegError) else None
        torch.save({"error": error, "repr": repr(exc), "traceback": traceback.format_exc()}, out)
    finally:
        with contextlib.suppress(Exception):
            shutdown()
    if failed:
        sys.exit(1)  # the launcher then stops the other ranks


def _load_outcomes(result_dir: Path, world_size: int) -> list[dict[str, Any] | None]:
    outcomes: list[dict[str, Any] | None] = []
    for rank in range(world_size):
        path = result_dir / f"rank{rank}.pt"
        outcomes.append(torch.load(path, weights_only=False) if path.exists() else None)
    return outcomes


def _raise_first_error(outcomes: list[dict[str, Any] | None], failed_rank: int | None) -> None:
    """Re-raise the ranks' error: a ReciprocalSegError first (others are often its echo), lowest rank."""
    for outcome in outcomes:
        if outcome is not None and isinstance(outcome.get("error"), ReciprocalSegError):
            raise outcome["error"]
    for rank, outcome in enumerate(outcomes):
        if outcome is not None and "repr" in outcome:
            raise TrainingError(f"rank {rank} failed: {outcome['repr']}\n{outcome['traceback']}")
    if failed_rank is not None:
        raise TrainingError(f"rank {failed_rank} stopped without a result (killed?)")


@contextlib.contextmanager
def _forward_signals(pids: Callable[[], list[int]]) -> Iterator[None]:
    """While the ranks run, SIGINT/SIGTERM to this process become SIGTERM to each rank.

    The ranks treat SIGTERM as a cancel request: they agree on an iteration, write a
    checkpoint and exit; this process waits for them.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def forward(*_: Any) -> None:
        for pid in pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_ranks(
    fn: Callable[..., Any],
    world_size: int,
    backend: str,
    args: tuple[Any, ...] = (),
    grace_s: float = 10.0,
    start_method: str = "spawn",
) -> list[Any]:
    """Run ``fn(ctx, *args)`` in ``world_size`` new processes on this machine; return their results.

    ``fn`` must be importable (a module-level function) and its arguments and result
    picklable. Ranks rendezvous through a file in a temporary folder (no TCP port to pick).
    A `CancelledError` (or other `ReciprocalSegError`) raised by a rank is re-raised here;
    any other failure of a rank stops the others and raises `TrainingError` with its traceback.
    ``start_method="fork"`` starts CPU ranks in a moment (no new PyTorch import; tests, Linux
    only); NCCL ranks need the default ``"spawn"`` (CUDA cannot be used in a forked process).
    """
    if backend == "nccl" and start_method != "spawn":
        raise TrainingError("GPU ranks (NCCL) must be started with start_method='spawn'")
    with tempfile.TemporaryDirectory(prefix="reciprocalseg-ranks-") as tmp:
        result_dir = Path(tmp)
        init_method = (result_dir / "store").as_uri()
        context = mp.start_processes(
            _rank_entry,
            args=(fn, world_size, backend, init_method, str(result_dir), args),
            nprocs=world_size,
            join=False,
            start_method=start_method,
        )
        failed_rank = None
        join_kwargs = (
            {"grace_period": grace_s} if "grace_period" in inspect.signature(context.join).parameters else {}
        )
        with _forward_signals(context.pids):
            try:
                while not context.join(timeout=1.0, **join_kwargs):
                    pass
            except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
                failed_rank = exc.error_index
        outcomes = _load_outcomes(result_dir, world_size)
    _raise_first_error(outcomes, failed_rank)
    return [outcome["result"] if outcome is not None else None for outcome in outcomes]


# -- training entry points ---------------------------------------------------------------
def train_rank(ctx: DistContext, request: TrainRequest, config: TrainConfig) -> RunResult:
    """One rank of a training request: rank 0 reports progress as the CLI does."""
    cancel = CancelToken(Path(request.out) / "CANCEL")
    cancel.install_signal_handlers()
    trainer = DistributedTrainer(
        config,
        request.labeled,
        request.unlabeled,
        Path(request.out),
        ctx,
        [progress_listener(request.json_events)] if ctx.is_main else None,
        cancel,
        request.warm_start,
        sync_batchnorm=request.sync_bn,
        started=request.started,  # the command's start: a budget counts from it
    )
    return trainer.run()


def launch_local(request: TrainRequest, config: TrainConfig) -> int:
    """``reciprocalseg train --gpus N``: N processes on this machine (NCCL, one GPU each; gloo on CPU)."""
    backend = local_backend(request.gpus, request.config.get("device") or config.device)
    results = run_ranks(train_rank, request.gpus, backend, (request, config))
    print_result(request, results[0])
    return 0


def _train_without_torchrun(request: TrainRequest) -> int:
    """What ``reciprocalseg train`` does: one process, or ``--gpus N`` local ranks."""
    config = request.train_config()
    if request.gpus > 1:
        return launch_local(request, config)
    print_result(request, train_in_process(request, config))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``torchrun ... -m reciprocalseg.training.distributed train ARGS``: the ``train`` command on every rank.

    Under torchrun (``WORLD_SIZE`` set) each process is one rank: NCCL on ``cuda:LOCAL_RANK``,
    or gloo with ``--device cpu``. Started without torchrun it behaves as ``reciprocalseg train``
    (``--gpus N`` starts N local processes). Exit codes are the CLI's: 0, 1 error, 3 cancelled.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        argv = argv[1:]
    args = train_parser("python -m reciprocalseg.training.distributed train").parse_args(argv)
    started = time.perf_counter()  # a time budget counts the start-up (training/budget.py)
    ctx = None
    try:
        if "WORLD_SIZE" not in os.environ:
            return _train_without_torchrun(request_from_args(args, started))
        backend = "gloo" if (args.device or "") == "cpu" else "nccl"
        ctx = init_distributed(backend)
        request = request_from_args(args, started)
        result = train_rank(ctx, request, request.train_config())
        if ctx.is_main:
            print_result(request, result)
        return 0
    except CancelledError as exc:
        if ctx is None or ctx.is_main:
            print(f"cancelled: {exc}. Rerun the same command to resume.", file=sys.stderr)
        return EXIT_CANCELLED
    except ReciprocalSegError as exc:
        rank = "" if ctx is None else f"rank {ctx.rank}: "
        print(f"{rank}error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
