"""Stage the left-atrium data for a GPU lease: `python -m benchmarks.stage_la`.

A device call carries at most 64 MiB (the working tree, `shared/` and every carried path
together), and the data (about 118 MiB, already gzip-encoded NRRD) plus the SimpleITK wheel the
device lacks (about 50 MiB) need three calls. A lease is 15 minutes and a warm machine is given
back 30 s after a call, so the calls must follow each other without a pause for thought: this
packs the files into parts that fit, links them (hard links: no copy, no disk) into the ignored
folder `.stage/` of the checkout, and prints the calls to make, in order (docs/GPU_LEASE.md).

The wheel rides with the first part; the last part rides with the benchmark's own call. Case
pairs (image and label) stay in one part so that a part is a set of whole cases. `.stage/` and
`.whl/` must be ignored by git (`.git/info/exclude`): the data must never enter the repository,
and this refuses to write there otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1 << 20
# Headroom under the 64 MiB limit for what the estimate below cannot see (an untracked file
# created between now and the call, directory entries, rounding on the other side).
MARGIN_BYTES = 2 * MIB


class StageError(Exception):
    """Something that stops the staging, said so that the user knows what to do."""


@dataclass
class Part:
    name: str
    room: int  # bytes this part may hold
    files: list[Path] = field(default_factory=list)
    size: int = 0  # bytes it holds

    def add(self, group: list[Path], size: int) -> None:
        self.files.extend(group)
        self.size += size


def travelling_tree_bytes(repo: Path) -> int:
    """Bytes of what every device call sends anyway: tracked and untracked-not-ignored files."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout
    names = [n for n in listing.decode().split("\0") if n]
    return sum((repo / n).stat().st_size for n in names if (repo / n).is_file())


def require_ignored(repo: Path, folder: str) -> None:
    """Refuse to put data into a folder of the checkout that git would pick up."""
    probe = f"{folder}/probe"
    ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=repo).returncode == 0
    if not ignored:
        raise StageError(
            f"{folder}/ is not ignored by git in {repo}: the data must never be committed. "
            f"Add the line '/{folder}/' to {repo / '.git' / 'info' / 'exclude'} and run this again."
        )


def case_groups(data: Path) -> list[list[Path]]:
    """The files to carry, grouped: train.list (and cases.csv) first, then one group per case."""
    listed = data / "train.list"
    if not listed.is_file():
        raise StageError(f"{listed} not found: --data must be the folder of the 80 left-atrium cases")
    extras = [p for p in (listed, data / "cases.csv") if p.is_file()]
    groups = [extras]
    for case_id in listed.read_text().split():
        pair = [data / f"{case_id}_image.nrrd", data / f"{case_id}_label.nrrd"]
        missing = [p.name for p in pair if not p.is_file()]
        if missing:
            raise StageError(f"case {case_id} of train.list lacks {', '.join(missing)} in {data}")
        groups.append(pair)
    return groups


def pack(groups: list[list[Path]], rooms: list[int], more_room: int) -> list[Part]:
    """Fill parts in order (first fit by train.list order); a part is added when one is full.

    `rooms`: the room of the first parts (the first one shares its call with the wheel);
    `more_room`: the room of every part after those.
    """
    parts: list[Part] = []
    for group in groups:
        size = sum(p.stat().st_size for p in group)
        if not parts or parts[-1].size + size > parts[-1].room:
            room = rooms[len(parts)] if len(parts) < len(rooms) else more_room
            parts.append(Part(f"part{len(parts) + 1}", room))
            if size > room:
                raise StageError(
                    f"{group[0].name} and its label take {size / MIB:.1f} MiB, more than a call's "
                    f"room of {room / MIB:.1f} MiB left beside the working tree"
                )
        parts[-1].add(group, size)
    return parts


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed there
        shutil.copy2(source, target)


def write_parts(parts: list[Part], stage: Path) -> None:
    """Replace `stage` with one folder per part (only the folder this tool owns is removed)."""
    if stage.exists():
        shutil.rmtree(stage)
    for part in parts:
        folder = stage / part.name
        folder.mkdir(parents=True)
        for f in part.files:
            link_or_copy(f, folder / f.name)


def calls(parts: list[Part], wheel_dir: str, stage: str, budget_min: float) -> list[tuple[list[str], str]]:
    """(carry, command) of each device call, in order; the last one runs the benchmark."""
    out = []
    for i, part in enumerate(parts):
        carry = [f"{stage}/{part.name}"] + ([wheel_dir] if i == 0 else [])
        command = "bash benchmarks/gpu_stage.sh"
        if i == len(parts) - 1:
            command += f" && bash benchmarks/gpu_la.sh {budget_min:g}"
        out.append((carry, command))
    return out


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=repo.parent / "shared" / "data" / "la")
    ap.add_argument("--stage", default=".stage", help="ignored folder of the checkout for the parts")
    ap.add_argument("--wheels", default=".whl", help="ignored folder holding the SimpleITK wheel")
    ap.add_argument("--limit-mib", type=float, default=64.0, help="what one device call may carry")
    ap.add_argument("--budget-min", type=float, default=8.3, help="gpu_la.sh's training budget")
    args = ap.parse_args(argv)
    try:
        for folder in (args.stage, args.wheels):
            require_ignored(repo, folder)
        wheels = sorted((repo / args.wheels).glob("*.whl"))
        if not any(w.name.lower().startswith("simpleitk") for w in wheels):
            raise StageError(
                f"no SimpleITK wheel in {repo / args.wheels}: download it first (docs/GPU_LEASE.md, "
                "step 1, gives the pip download command)"
            )
        limit = int(args.limit_mib * MIB) - travelling_tree_bytes(repo) - MARGIN_BYTES
        wheel_bytes = sum(w.stat().st_size for w in wheels)
        parts = pack(case_groups(args.data), [limit - wheel_bytes], limit)
        write_parts(parts, repo / args.stage)
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"staged {sum(len(p.files) for p in parts)} files from {args.data} in {len(parts)} parts:")
    for i, part in enumerate(parts):
        extra = f" + wheels {wheel_bytes / MIB:.1f} MiB" if i == 0 else ""
        print(f"  {args.stage}/{part.name}: {len(part.files)} files, {part.size / MIB:.1f} MiB{extra}")
    print("device calls, one right after the other (a warm machine goes back after 30 s idle):")
    for i, (carry, command) in enumerate(calls(parts, args.wheels, args.stage, args.budget_min), 1):
        print(f"  {i}. carry={carry} command={command!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
