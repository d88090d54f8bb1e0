"""Two CPU processes (gloo on 127.0.0.1): the ranks stay identical, and one 2-process step equals one 1-process
step on the same global batch (gradients averaged, not summed)."""

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
    _one_step(rank, world, data, out)  # the same processes (starting them is the slow part)
    shutdown()


@pytest.fixture(scope="module")
def gloo_run(tmp_path_factory):
    """Two gloo processes: a short training run, then one step on a fixed global batch (`_one_step`)."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not built")
    tmp_path = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(2)
    write_idx(tmp_path / "train-images-idx3-ubyte", (rng.random((16, 16, 16)) * 255).astype(np.uint8))
    build_dataset(tmp_path / "train-images-idx3-ubyte", tmp_path / "ds", resolution=16, channels=1)
    out = tmp_path / "runs"
    (out / "run").mkdir(parents=True)
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path / "ds"), str(out)), nprocs=2, join=True,
                       start_method="spawn")
    return tmp_path / "ds", out


def test_two_gloo_processes_stay_identical(gloo_run):
    _, out = gloo_run
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


def _one_step(rank: int, world: int, data: str, out: str) -> None:
    """One train_step of a global batch of 4 (fixed latents and reals) on `world` processes; saves the result."""
    from opstylegan.config import preset
    from opstylegan.data.dataset import ImageDataset
    from opstylegan.training import loss as L
    from opstylegan.training.config import TrainConfig
    from opstylegan.training.distributed import DistInfo, init_distributed
    from opstylegan.training.loop import Trainer

    torch.set_num_threads(1)
    info = DistInfo()
    if world > 1:  # the process group of `_worker` is already up
        info = init_distributed(torch.device("cpu"))
    nets = preset("tiny", img_resolution=16, img_channels=1, overparam=True)
    # Path length is off: its noise comes from per-rank RNG streams, so it cannot match sample for sample.
    # ADA is off for the same reason. R1 runs (batch_idx 0), with its lazy interval scaling.
    cfg = TrainConfig(data=data, preset="tiny", overparam=True, batch=4, workers=0, aug="noaug", pl_weight=0,
                      style_mixing_prob=0, generator=nets.generator.to_dict(),
                      discriminator=nets.discriminator.replace(mbstd_group_size=2).to_dict())
    tr = Trainer(cfg, info=info, dataset=ImageDataset(data))
    # The global batch: 4 latents (G main), 4 more (D main) and 4 reals. Rank r takes samples 2r, 2r + 1. The
    # minibatch-stddev layer groups samples strided ([G, N/G]: groups {0, 2}, {1, 3} of a batch of 4), so the
    # one process sees the batch interleaved as (0, 2, 1, 3): its groups are the ranks' pairs {0, 1}, {2, 3}.
    g = torch.Generator().manual_seed(123)
    ws = [L.sample_ws(tr.G, 4, mixing_prob=0, update_emas=False, generator=g).clone() for _ in range(2)]
    reals = torch.stack([tr.dataset[i] for i in range(4)]).float() / 127.5 - 1  # [4, 1, 16, 16]
    mine = [0, 2, 1, 3] if world == 1 else [2 * rank, 2 * rank + 1]
    calls = iter(w[mine] for w in ws)
    tr._sample_ws = lambda n, update_emas=False: next(calls)  # type: ignore[method-assign]
    tr.train_step(reals[mine])
    torch.save({"G": {k: v.detach().clone() for k, v in tr.G.named_parameters()},
                "D": {k: v.detach().clone() for k, v in tr.D.named_parameters()},
                "G_grad": {k: v.grad.clone() for k, v in tr.G.named_parameters() if v.grad is not None},
                "D_grad": {k: v.grad.clone() for k, v in tr.D.named_parameters() if v.grad is not None},
                "terms": {k: v[-1] for k, v in tr._tick_sums.items() if v}},
               os.path.join(out, f"world{world}-rank{rank}.pt"))


def test_two_process_step_equals_one_process_step_on_the_same_global_batch(gloo_run, tmp_path):
    data, out = gloo_run
    _one_step(0, 1, str(data), str(tmp_path))
    one = torch.load(tmp_path / "world1-rank0.pt", weights_only=True)
    two = [torch.load(out / f"world2-rank{r}.pt", weights_only=True) for r in range(2)]
    assert one["terms"].keys() == {"Gmain", "Dmain", "Dr1"} == two[0]["terms"].keys()
    for term, value in one["terms"].items():  # the losses are averaged over the ranks, as over the batch
        assert two[0]["terms"][term] == two[1]["terms"][term] == pytest.approx(value, rel=1e-5), term
    for part in ("G_grad", "D_grad", "G", "D"):
        assert one[part].keys() == two[0][part].keys() and len(one[part]) > 0
        for k, v in one[part].items():
            assert torch.equal(two[0][part][k], two[1][part][k]), (part, k)
            # Summed instead of averaged gradients would be twice as large.
            torch.testing.assert_close(two[0][part][k], v, rtol=1e-4, atol=1e-6, msg=f"{part} {k}")
