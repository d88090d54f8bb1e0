"""Training state on disk: written atomically, read with torch.load(weights_only=True), newest complete wins.

A state file `state-<kimg>.pt` holds tensors and plain containers only (no pickled classes): networks, both
optimizers, counters, ADA, path-length mean and every RNG. It is written to a temporary file beside its
final name, fsynced, then renamed (os.replace), so a state file under its final name is always complete;
older states are deleted only after the new one is in place. `find_latest_state` returns the newest state
that loads and carries the expected format, skipping (and reporting) anything else.
"""

from __future__ import annotations

import io
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opstylegan.io.atomic import atomic_path

FORMAT = "opstylegan-training-state"
FORMAT_VERSION = 1
_STATE_RE = re.compile(r"^state-(\d{6}\.\d{3})\.pt$")


class StateError(ValueError):
    """A training state is missing, unreadable, or from an incompatible run."""


def kimg_tag(cur_nimg: int) -> str:
    """Images seen -> the zero-padded kimg used in snapshot names, e.g. 12345 -> '000012.345'."""
    return f"{cur_nimg // 1000:06d}.{cur_nimg % 1000:03d}"


def state_path(run_dir: Path, cur_nimg: int) -> Path:
    return Path(run_dir) / f"state-{kimg_tag(cur_nimg)}.pt"


# -- RNGs -------------------------------------------------------------------------------------------------

def capture_global_rng() -> dict[str, Any]:
    """torch CPU, CUDA (when initialised), python `random` and numpy global RNG states, as tensors / tuples."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }


def restore_global_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


# -- files ------------------------------------------------------------------------------------------------

def _write_bytes(path: Path, data: bytes) -> None:
    """Temp file beside `path`, fsync, os.replace (the seam the kill test slows down)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Serialises `state` (tensors and plain containers) and writes it atomically to `path`."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, buf)
    path = Path(path)
    _write_bytes(path, buf.getvalue())
    return path


def load_state(path: str | os.PathLike[str], *, map_location: torch.device | str = "cpu",
               mmap: bool = False) -> dict[str, Any]:
    """Reads a state file with torch.load(weights_only=True); raises StateError if it is not a complete state.

    With `mmap`, tensors are memory-mapped instead of read (a cheap check that the file loads).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training state not found: {str(path)!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # a truncated zip, a foreign pickle refused by weights_only, ...
        raise StateError(f"{str(path)!r} is not a readable training state: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise StateError(f"{str(path)!r} is not an opstylegan training state (format {FORMAT!r} missing)")
    if state.get("format_version") != FORMAT_VERSION:
        raise StateError(f"{str(path)!r} has format_version {state.get('format_version')!r}; expected "
                         f"{FORMAT_VERSION}")
    return state


def list_states(run_dir: str | os.PathLike[str]) -> list[Path]:
    """State files of a run folder, newest (most images) first. Temporary files are never listed."""
    run_dir = Path(run_dir)
    found = [(m.group(1), p) for p in run_dir.iterdir() if (m := _STATE_RE.match(p.name))] if run_dir.is_dir() else []
    return [p for _, p in sorted(found, reverse=True)]


@dataclass
class LatestState:
    path: Path
    state: dict[str, Any]
    skipped: list[str] = field(default_factory=list)


def find_latest_state(run_dir: str | os.PathLike[str], *, map_location: torch.device | str = "cpu") -> LatestState:
    """The newest complete state of a run; unreadable newer files are listed in `skipped` (never silent)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {str(run_dir)!r}")
    skipped: list[str] = []
    for path in list_states(run_dir):
        try:
            return LatestState(path, load_state(path, map_location=map_location), skipped)
        except StateError as e:
            skipped.append(str(e))
    extra = f" (unreadable: {'; '.join(skipped)})" if skipped else ""
    raise StateError(f"{str(run_dir)!r} has no complete training state (state-*.pt){extra}")


def prune_states(run_dir: str | os.PathLike[str], keep: int = 2) -> list[Path]:
    """Deletes the state files older than the `keep` newest ones that load (called after a new state is in place).

    Only states that load count among the kept ones: an unreadable state newer than them is left alone (resume
    skips it and says so), so it never costs a good state its place. Unreadable states older than the kept
    ones are deleted with the other old states.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    kept, removed = 0, []
    for p in list_states(run_dir):
        if kept < keep:
            try:
                load_state(p, mmap=True)
            except StateError:
                continue
            kept += 1
        else:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def remove_stale_temporaries(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Removes what a killed writer left behind: `.state-*.tmp` files and `.network-*.tmp` / `.old` folders.

    Call it only when no writer runs (e.g. before resuming); complete snapshots are never touched.
    """
    import shutil

    run_dir = Path(run_dir)
    stale = sorted(p for pattern in (".state-*.tmp", ".network-*.tmp", ".network-*.old", ".latest.json.*.tmp")
                   for p in run_dir.glob(pattern))
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale
