"""benchmarks/gpu_check.py: its --dry-run (every part on the CPU at toy sizes) writes the JSON, the markdown and
the returned files; a part over its time box is killed and recorded, a failing part is recorded with its
traceback, and the parts after both still run; bad options are refused before any work."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from opstylegan.data import write_idx

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
PARTS = ["fp16", "autocast", "ppl", "projector", "torchrun", "nccl", "resume", "speed_g", "speed_train",
         "inversion", "fmnist"]


def run(*args: str, out: Path | None = None, timeout: float = 1800, stall: str | None = None
        ) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("OUT", None)
    env.pop("OPSTYLEGAN_GPU_CHECK_STALL", None)
    if stall:
        env["OPSTYLEGAN_GPU_CHECK_STALL"] = stall  # that part hangs until its time box kills it
    cmd = [sys.executable, str(SCRIPT), *args] + (["--out", str(out)] if out else [])
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def fake_fmnist(folder: Path, n: int = 64) -> Path:
    """Fashion-MNIST's layout (gzipped IDX images and labels) with random 28x28 pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), compress=True)
    write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8), compress=True)
    return folder


@pytest.mark.slow
def test_dry_run_writes_every_part(tmp_path):
    out = tmp_path / "out"
    # --box-scale: generous time boxes, so a busy CI machine does not turn slowness into timeouts.
    r = run("--dry-run", "--fmnist", str(fake_fmnist(tmp_path / "fmnist")), "--box-scale", "20", out=out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    files = sorted(p.name for p in out.iterdir())
    assert files == ["fmnist32-baseline-gpu.tar", "fmnist32-fakes-gpu.png", "fmnist32-overparam-gpu.tar",
                     "gpu_check.json", "gpu_check.log", "gpu_check.md"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)  # what the device tool brings back

    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["format"] == "opstylegan-gpu-check" and doc["mode"] == "dry"
    assert list(doc["parts"]) == PARTS
    assert {p: r["status"] for p, r in doc["parts"].items()} == dict.fromkeys(PARTS, "ok")
    assert doc["environment"]["device"] == "cpu" and doc["environment"]["sizes"]["res"] == 16
    rows = {p: r["rows"] for p, r in doc["parts"].items()}
    assert all(rows[p] and all(row["ok"] for row in rows[p]) for p in PARTS if p != "fmnist")

    ppl = rows["ppl"]
    assert len(ppl) == 2 and all(row["rel_diff"] < 1e-3 for row in ppl)
    (resume,) = rows["resume"]
    assert resume["resume_tensors_differing"] == 0
    for part, key in (("speed_g", "s_per_step"), ("speed_train", "s_per_kimg")):
        speed = {row["variant"]: row for row in rows[part] if row["check"] == "speed"}
        assert {"baseline", "overparam"} <= set(speed) and speed["baseline"]["time_ratio"] == 1.0
        assert all(row[key] > 0 and row["repeats"] >= 1 for row in speed.values())
    inv = {row["batch"]: row for row in rows["inversion"]}
    assert set(inv) == {4, 1} and all(row["image_steps_per_s"] > 0 for row in inv.values())
    assert doc["parts"]["inversion"]["summary"].startswith("100 x 1000 steps projected to")

    trained = {row["model"]: row for row in rows["fmnist"] if row["check"] == "trained"}
    assert set(trained) == {"baseline", "overparam"}
    assert trained["baseline"]["kimg"] == trained["overparam"]["kimg"] == 0.016  # 2 chunks of 2 steps x 4
    (fid,) = [row for row in rows["fmnist"] if row["check"].startswith("FID")]
    from opstylegan.metrics.weights import WeightsError, inception_path

    try:
        inception_path()
    except WeightsError:
        assert fid["fid"].startswith("not measured")
    else:
        assert fid["fid_baseline"] > 0 and fid["fid_overparam"] > 0

    from opstylegan import Generator

    for name, overparam in (("fmnist32-baseline-gpu", False), ("fmnist32-overparam-gpu", True)):
        with tarfile.open(out / f"{name}.tar") as t:
            t.extractall(tmp_path / "models", filter="data")
        G = Generator.from_pretrained(tmp_path / "models" / name)
        assert G.overparam is overparam and (G.img_resolution, G.img_channels) == (32, 1)

    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# opstylegan GPU check (dry run, CPU)")
    for p in PARTS:
        assert re.search(rf"^\| {p} \| ok \| [0-9.]+ \|", md, re.M), p
        assert f"\n## {p}\n" in md
    assert "| baseline | " in md and "| overparam | " in md


def test_time_box_and_failure_are_recorded_and_the_next_parts_run(tmp_path):
    corrupt = tmp_path / "fmnist"
    corrupt.mkdir()
    (corrupt / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"not gzip data")
    out = tmp_path / "out"
    r = run("--dry-run", "--only", "fp16,fmnist,autocast", "--box", "fp16=0.5", "--fmnist", str(corrupt),
            "--box-scale", "20", out=out, timeout=900, stall="fp16")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    parts = doc["parts"]
    assert list(parts) == ["fp16", "fmnist", "autocast"]
    assert parts["fp16"]["status"] == "timeout" and "time box" in parts["fp16"]["summary"]
    assert "== fp16" in parts["fp16"]["output_tail"]  # what the killed worker had printed
    assert parts["fmnist"]["status"] == "failed"
    (row,) = parts["fmnist"]["rows"]
    assert not row["ok"] and "IDXError" in row["traceback"] and "corrupt gzip" in row["error"]
    assert parts["autocast"]["status"] == "ok" and parts["autocast"]["rows"]
    md = (out / "gpu_check.md").read_text()
    assert "| fp16 | timeout |" in md and "| fmnist | failed |" in md and "| autocast | ok |" in md
    assert "FAILED build the dataset" in md


@pytest.mark.parametrize("args, message", [
    (["--dry-run", "--only", "fp16,warp"], "--only 'fp16,warp': give distinct part names"),
    (["--dry-run", "--box", "fp16"], "--box 'fp16': expected PART=SECONDS"),
    (["--dry-run", "--box", "nope=3"], "--box 'nope=3'"),
    (["--dry-run", "--budget", "0"], "--budget must be > 0"),
    (["--dry-run", "--fmnist", "/nonexistent/fmnist"], "--fmnist /nonexistent/fmnist: not a folder"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, args, message):
    r = run(*args, out=tmp_path / "out")
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_no_out_folder_and_no_idx_files_are_refused(tmp_path):
    r = run("--dry-run")
    assert r.returncode == 2 and "give --out DIR (or set $OUT)" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("--dry-run", "--only", "fp16", "--fmnist", str(empty), out=tmp_path / "out", timeout=300)
    assert r.returncode == 2 and f"--fmnist {empty}: no train-images-idx3-ubyte[.gz] file in it" in r.stderr
    assert not (tmp_path / "out" / "gpu_check.json").exists()  # refused before any part ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_only_the_dry_run_runs(tmp_path):
    r = run("--only", "fp16", out=tmp_path / "out", timeout=300)
    assert r.returncode == 2 and "no CUDA device here" in r.stderr and "--dry-run" in r.stderr
