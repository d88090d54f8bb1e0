"""Exact resume, atomic training states under SIGKILL, NaN stop keeping the last good snapshot (CPU, tiny)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from opstylegan.data import build_dataset, write_idx
from opstylegan.training import loss as L
from opstylegan.training import state as S
from opstylegan.training.config import TrainConfig
from opstylegan.training.loop import TrainingDiverged, train


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(1)
    write_idx(root / "train-images-idx3-ubyte", (rng.random((20, 16, 16)) * 255).astype(np.uint8))
    build_dataset(root / "train-images-idx3-ubyte", root / "ds", resolution=16, channels=1)
    return root / "ds"


def cfg_for(data: Path, **kw) -> TrainConfig:
    # Lazy intervals of 3 do not line up with the 4-step resume point; ada_kimg is tiny so that p really
    # moves and the augmentation RNG is exercised; the mirror makes the sampler stream 40 long.
    base = dict(data=str(data), preset="tiny", batch=4, workers=0, tick_kimg=0.008, snap=1, grid_size=2,
                r1_interval=3, pl_interval=3, ada_interval=2, ada_kimg=0.05, ada_target=0.2, mirror=True)
    return TrainConfig(**{**base, **kw})


def tensors_of(state: dict) -> dict[str, torch.Tensor]:
    """Every tensor of a training state, flattened to dotted keys (optimizer moments included)."""
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, x: object) -> None:
        if isinstance(x, torch.Tensor):
            out[prefix] = x
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(f"{prefix}.{i}", v)

    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "pl_mean", "ranks"):
        walk(key, state[key])
    return out


@pytest.mark.parametrize("overparam", [False, True])
def test_resume_is_bit_identical(dataset_dir, tmp_path, overparam):
    cfg = cfg_for(dataset_dir, overparam=overparam, kimg=0.032)  # 8 steps
    whole = train(cfg, outdir=tmp_path / "a")
    half = train(cfg.replace(kimg=0.016), outdir=tmp_path / "b")  # 4 steps, then resume to 8
    resumed = train(resume=half.run_dir, kimg=0.032)
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "state-000000.016.pt"

    a = S.find_latest_state(whole.run_dir).state
    b = S.find_latest_state(resumed.run_dir).state
    assert a["cur_nimg"] == b["cur_nimg"] == 32 and a["batch_idx"] == b["batch_idx"] == 8
    ta, tb = tensors_of(a), tensors_of(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert different == []
    assert a["ranks"][0]["ada"] == b["ranks"][0]["ada"] and a["ranks"][0]["ada"]["p"] > 0
    # The training really moved (guards against a vacuous comparison of two untouched models).
    from opstylegan.training.loop import Trainer

    init = Trainer(cfg).G.state_dict()
    assert not any(torch.equal(init[k], a["G"][k]) for k in ("_mapping.layers.0.weight", "_synthesis.blocks.0.const"))
    # stats.jsonl continues without duplicate ticks.
    ticks = [json.loads(line)["tick"] for line in (resumed.run_dir / "stats.jsonl").read_text().splitlines()]
    assert ticks == [1, 2, 3, 4]


def test_state_loads_with_weights_only_and_refuses_other_config(dataset_dir, tmp_path):
    res = train(cfg_for(dataset_dir, kimg=0.008), outdir=tmp_path)
    path = S.list_states(res.run_dir)[0]
    torch.load(path, weights_only=True)  # no pickled classes inside
    from opstylegan.training.loop import Trainer

    other = Trainer(cfg_for(dataset_dir, kimg=0.008, gamma=5.0))
    with pytest.raises(S.StateError, match="'gamma': \\("):
        other.load_state_dict(S.load_state(path))
    state = S.load_state(path)
    assert state["sampler"]["index"] == 8 and state["sampler"]["num_items"] == 40  # 20 images, mirrored
    state["sampler"]["num_items"] = 39  # as if the dataset had been rebuilt with another size
    with pytest.raises(S.StateError, match="cannot resume the data stream: .*num_items=39"):
        Trainer(cfg_for(dataset_dir, kimg=0.008)).load_state_dict(state)


def test_corrupt_newest_state_is_skipped(dataset_dir, tmp_path):
    res = train(cfg_for(dataset_dir, kimg=0.016), outdir=tmp_path)
    good = S.list_states(res.run_dir)[0]
    bad = res.run_dir / "state-000099.000.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # a truncated "newer" state
    latest = S.find_latest_state(res.run_dir)
    assert latest.path == good and len(latest.skipped) == 1 and "state-000099.000.pt" in latest.skipped[0]
    (res.run_dir / "state-000098.000.pt").write_bytes(b"not a state")
    for p in S.list_states(res.run_dir):
        if p.name.startswith("state-00000"):
            p.unlink()
    with pytest.raises(S.StateError, match="has no complete training state"):
        S.find_latest_state(res.run_dir)


KILLED_WRITER = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from pathlib import Path
    from opstylegan.training import state as S
    from opstylegan.training.config import TrainConfig
    from opstylegan.training.loop import train

    data, outdir, marker = sys.argv[1:4]
    real_write, calls = S._write_bytes, []

    def slow_write(path, data_bytes):
        calls.append(path)
        if len(calls) < 2:
            return real_write(path, data_bytes)
        # Second state: write half of it into the temporary file, tell the parent, and hang until killed.
        with S.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data_bytes[: len(data_bytes) // 2])
                f.flush()
            Path(marker).write_text(str(tmp))
            time.sleep(120)

    S._write_bytes = slow_write
    cfg = TrainConfig(data=data, preset="tiny", batch=4, workers=0, tick_kimg=0.008, snap=1, grid_size=2,
                      kimg=0.032, r1_interval=3, pl_interval=3)
    train(cfg, outdir=outdir)
""")


def test_sigkill_during_snapshot_keeps_last_complete_state(dataset_dir, tmp_path):
    marker = tmp_path / "writing"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(dataset_dir), str(tmp_path / "runs"),
                             str(marker)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"writer exited early: {proc.stdout.read().decode()[-2000:]}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the writer never reached the second snapshot"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    (run_dir,) = (tmp_path / "runs").iterdir()
    partial = Path(marker.read_text())
    assert partial.exists() and partial.name.startswith(".state-000000.016.pt.")  # the half-written temp file
    assert [p.name for p in S.list_states(run_dir)] == ["state-000000.008.pt"]  # never under a final name
    latest = S.find_latest_state(run_dir)
    assert latest.state["cur_nimg"] == 8 and latest.skipped == []

    resumed = train(resume=run_dir)
    assert resumed.resumed_from == run_dir / "state-000000.008.pt"
    assert not partial.exists()  # stale temporaries removed on resume
    assert S.find_latest_state(run_dir).state["cur_nimg"] == 32


def test_nan_stops_run_and_keeps_last_good_snapshot(dataset_dir, tmp_path, monkeypatch):
    cfg = cfg_for(dataset_dir, kimg=0.032)
    calls = {"n": 0}
    real = L.path_length_penalty

    def poisoned(lengths, pl_mean):  # the 3rd path-length step (steps 0, 3, 6: step 6) goes NaN
        calls["n"] += 1
        out = real(lengths, pl_mean)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(L, "path_length_penalty", poisoned)
    with pytest.raises(TrainingDiverged, match=r"^loss Gpl is nan at step 6 \(kimg 0\.024\)") as err:
        train(cfg, outdir=tmp_path)
    assert err.value.term == "Gpl" and err.value.step == 6
    (run_dir,) = tmp_path.iterdir()
    # Snapshots after steps 2, 4, 6 (kimg 0.024 was written just before step 6 diverged); two are kept.
    assert [p.name for p in S.list_states(run_dir)] == ["state-000000.024.pt", "state-000000.016.pt"]
    assert json.loads((run_dir / "latest.json").read_text())["network"] == "network-000000.024"
    latest = S.find_latest_state(run_dir).state
    assert all(torch.isfinite(t).all() for t in tensors_of(latest).values() if t.is_floating_point())
