"""Two CPU processes (gloo on 127.0.0.1) train a few steps and end with identical weights on both ranks."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from opstylegan.data import build_dataset, write_idx
from opstylegan.training import state as S


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    # The environment torchrun would set; init_distributed must pick it up (gloo on CPU).
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from opstylegan.training.config import TrainConfig
    from opstylegan.training.distributed import init_distributed, shutdown
    from opstylegan.training.loop import Trainer

    info = init_distributed(torch.device("cpu"))
    assert (info.rank, info.world_size) == (rank, world) and torch.distributed.get_backend() == "gloo"
    cfg = TrainConfig(data=data, preset="tiny", overparam=True, batch=4, kimg=0.012, workers=0, tick_kimg=0.008,
                      snap=1, grid_size=2, r1_interval=2, pl_interval=2, ada_interval=1, ada_kimg=0.05,
                      ada_target=0.2)
    tr = Trainer(cfg, info=info)
    gen0 = tr.gen.get_state()
    tr.run(os.path.join(out, "run"))  # rank 0 writes the run folder; rank 1 only joins the collectives
    torch.save({"G": tr.G.state_dict(), "D": tr.D.state_dict(), "G_ema": tr.G_ema.state_dict(),
                "opt_G": tr.opt_G.state_dict()["state"], "pl_mean": tr.pl_mean, "ada_p": tr.ada.p,  # type: ignore[union-attr]
                "batch_gpu": tr.batch_gpu, "gen0": gen0, "cur_nimg": tr.cur_nimg},
               os.path.join(out, f"rank{rank}.pt"))
    shutdown()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_gloo_processes_stay_identical(tmp_path):
    rng = np.random.default_rng(2)
    write_idx(tmp_path / "train-images-idx3-ubyte", (rng.random((16, 16, 16)) * 255).astype(np.uint8))
    build_dataset(tmp_path / "train-images-idx3-ubyte", tmp_path / "ds", resolution=16, channels=1)
    out = tmp_path / "runs"
    (out / "run").mkdir(parents=True)
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path / "ds"), str(out)), nprocs=2, join=True,
                       start_method="spawn")
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["cur_nimg"] == r1["cur_nimg"] == 12  # 3 steps of the global batch
    assert r0["batch_gpu"] == r1["batch_gpu"] == 2  # the batch of 4 is split over 2 processes
    assert not torch.equal(r0["gen0"], r1["gen0"])  # per-rank seeds: different latents on each rank
    for net in ("G", "D", "G_ema"):
        assert r0[net].keys() == r1[net].keys()
        differ = [k for k in r0[net] if not torch.equal(r0[net][k], r1[net][k])]
        assert differ == [], f"{net} differs across ranks in {differ}"
    for k in r0["opt_G"]:
        assert torch.equal(r0["opt_G"][k]["exp_avg_sq"], r1["opt_G"][k]["exp_avg_sq"])
    assert torch.equal(r0["pl_mean"], r1["pl_mean"]) and r0["pl_mean"] > 0
    assert r0["ada_p"] == r1["ada_p"] > 0
    # Rank-0-only I/O: one run folder, holding a state that gathered both ranks' RNG streams.
    run_dir = out / "run"
    assert (run_dir / "stats.jsonl").read_text().count("\n") == 2 and (run_dir / "network-latest").is_dir()
    state = S.find_latest_state(run_dir).state
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert not torch.equal(state["ranks"][0]["gen"], state["ranks"][1]["gen"])
    # The file written by rank 0 equals what rank 1 trained in memory.
    for k, v in state["G"].items():
        assert torch.equal(v, r1["G"][k]), k
