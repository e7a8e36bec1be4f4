"""Train a :class:`~reciprocalseg.training.request.TrainRequest`: in this process or on local ranks.

``reciprocalseg train`` calls :func:`run` with the request it built; the service's training child
is ``python -m reciprocalseg.training.run_request --request RUN/request.json``. Exit codes are
the CLI's: 0 done, 1 error (message on stderr), 3 cancelled (a checkpoint was written; the same
request resumes it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..common.errors import exit_code_of
from .request import TrainRequest, print_result, train_in_process


def run(request: TrainRequest) -> int:
    """Train ``request`` (``gpus`` > 1: that many local ranks); print where the models are."""
    config = request.train_config()
    if request.gpus > 1:
        from .distributed import launch_local

        return launch_local(request, config)
    print_result(request, train_in_process(request, config))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reciprocalseg.training.run_request", description="train a saved training request"
    )
    parser.add_argument("--request", type=Path, required=True, help="RUN/request.json")
    started = time.perf_counter()  # a time budget counts the start-up (training/budget.py)
    args = parser.parse_args(argv)

    def run_loaded() -> int:
        request = TrainRequest.load(args.request)
        request.started = started
        return run(request)

    return exit_code_of(run_loaded)


if __name__ == "__main__":
    sys.exit(main())
