"""The measuring parts of `benchmarks/gpu_check.py`: speed at the paper's setting, the inversion protocol, and
both Fashion-MNIST models trained side by side (see gpu_check_parts.py for the framework they share)."""

from __future__ import annotations

import argparse
import statistics
import tarfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from gpu_check_parts import (
    FAKES_NAME,
    FMNIST_NAMES,
    INVERSION_GOAL_S,
    PAPER,
    CheckFailed,
    Context,
    Recorder,
    bench_args,
    free_memory,
    gen_config,
    make_lpips,
    peak_gib,
    reset_peak,
    sync,
    variant_name,
)
from opstylegan.models.generator import Generator


# ----------------------------------------------------------------------------------------------------------
# Speed at the paper's setting: G forward+backward, and full training steps.

def _g_step(G: Generator, fused: bool | None, batch: int, gen: torch.Generator) -> None:
    """Mapping + synthesis forward + backward of `batch` latents drawn on the device."""
    from opstylegan.latent import normal_rows

    z = normal_rows([batch, G.cfg.z_dim], rows=G.rows if G.overparam else None, generator=gen,
                    device=gen.device)
    G.synthesis(G.mapping(z), fused=fused).square().mean().backward()


def part_speed_g(ctx: Context) -> dict[str, Any]:
    """G mapping+synthesis forward+backward, batch 16, baseline / baseline-grouped / overparam, interleaved;
    the peak memory of each variant alone first."""
    import bench_networks

    rec = Recorder(ctx)
    s = ctx.sizes
    args = bench_args(ctx)
    names = list(bench_networks.VARIANTS)
    times: dict[str, list[float]] = {n: [] for n in names}
    gen = torch.Generator(ctx.device).manual_seed(1)
    mem = _memory_alone(ctx, rec, names, lambda n: _g_memory(ctx, args, n))

    def timing() -> dict[str, Any]:
        models = {n: bench_networks.make(args, n) for n in names}
        for G, fused in models.values():  # warm-up (cuDNN autotuning, allocator)
            _g_step(G, fused, s.batch, gen)
        per_repeat = 0.0
        for r in range(s.g_repeats):
            if r and ctx.left() < per_repeat * 1.5:
                break
            t_rep = time.perf_counter()
            for n, (G, fused) in models.items():
                sync(ctx.device)
                t0 = time.perf_counter()
                for _ in range(s.g_steps):
                    G.zero_grad(set_to_none=True)
                    _g_step(G, fused, s.batch, gen)
                sync(ctx.device)
                times[n].append((time.perf_counter() - t0) / s.g_steps)
            per_repeat = time.perf_counter() - t_rep
        return {"repeats": len(times[names[0]])}

    rec.check("timing (variants interleaved)", timing)
    _speed_rows(rec, names, times, mem, batch=s.batch, per="s_per_step")
    rec.notes.append("torch.compile / channels_last: not offered by opstylegan (no option in the code); not measured")
    return rec.result(summary=_ratio_summary(rec))


def _g_memory(ctx: Context, args: argparse.Namespace, name: str) -> float | None:
    import bench_networks

    G, fused = bench_networks.make(args, name)
    gen = torch.Generator(ctx.device).manual_seed(1)
    reset_peak(ctx.device)
    for _ in range(2):
        G.zero_grad(set_to_none=True)
        _g_step(G, fused, ctx.sizes.batch, gen)
    sync(ctx.device)
    return peak_gib(ctx.device)


def _memory_alone(ctx: Context, rec: Recorder, names: list[str], measure: Callable[[str], float | None]
                  ) -> dict[str, float | None]:
    """Peak memory of each variant alone in the process (others freed), so that no variant's figure
    includes another one's weights and optimizer states."""
    mem: dict[str, float | None] = {}
    for n in names:
        free_memory(ctx.device)
        row = rec.check("peak memory, alone", lambda n=n: {"peak_gib": measure(n)}, variant=n)
        mem[n] = row["peak_gib"] if row else None
        if row:
            rec.rows.remove(row)  # folded into the variant's speed row below
    free_memory(ctx.device)
    if not ctx.cuda:
        rec.notes.append("CPU: peak memory is not measured per variant here (see bench_*.py for CPU RSS)")
    return mem


def _speed_rows(rec: Recorder, names: list[str], times: dict[str, list[float]], mem: dict[str, float | None],
                *, batch: int, per: str) -> None:
    if not times[names[0]]:
        return
    base_t = statistics.median(times[names[0]])
    base_m = mem.get(names[0])
    for n in names:
        t = statistics.median(times[n])
        m = mem.get(n)
        s_per_kimg = t if per == "s_per_kimg" else t / batch * 1000
        rec.rows.append({"check": "speed", "variant": n, "ok": True, per: t, "s_per_kimg": s_per_kimg,
                         "img_per_s": 1000 / s_per_kimg, "peak_gib": m, "time_ratio": t / base_t,
                         "mem_ratio": (m / base_m) if (m and base_m) else None, "repeats": len(times[n]),
                         "all": [round(x, 5) for x in times[n]]})


def _ratio_summary(rec: Recorder) -> str:
    rows = {r["variant"]: r for r in rec.rows if r.get("check") == "speed"}
    if "overparam" not in rows:
        return ""
    r = rows["overparam"]
    mem = f", memory x{r['mem_ratio']:.3f}" if r.get("mem_ratio") else ""
    return (f"overparam / baseline: time x{r['time_ratio']:.3f}{mem} (paper: x{PAPER['time_ratio']}, "
            f"x{PAPER['mem_ratio']})")


def part_speed_train(ctx: Context) -> dict[str, Any]:
    """Full training steps (`Trainer.train_step`: G main, lazy PL, D main, lazy R1, EMA, ADA), interleaved."""
    import bench_training

    rec = Recorder(ctx)
    s = ctx.sizes
    args = bench_args(ctx)
    names = list(bench_training.VARIANTS)
    times: dict[str, list[float]] = {n: [] for n in names}
    mem = _memory_alone(ctx, rec, names, lambda n: _train_memory(ctx, args, n))

    def timing() -> dict[str, Any]:
        trainers = {n: bench_training.make(args, n) for n in names}
        for tr, reals in trainers.values():  # warm-up: allocator, cuDNN autotuning, the first (regularized) step
            tr.train_step(reals)
        per_repeat = 0.0
        for r in range(s.train_repeats):
            if r and ctx.left() < per_repeat * 1.5:
                break
            t_rep = time.perf_counter()
            for n, (tr, reals) in trainers.items():
                while s.train_steps % 16 == 0 and tr.batch_idx % 16:  # same point of the lazy-regularizer cycle
                    tr.train_step(reals)
                sync(ctx.device)
                t0 = time.perf_counter()
                for _ in range(s.train_steps):
                    tr.train_step(reals)
                sync(ctx.device)
                times[n].append((time.perf_counter() - t0) / (s.train_steps * s.batch) * 1000)
            per_repeat = time.perf_counter() - t_rep
        g = trainers[names[0]][0].cfg
        return {"repeats": len(times[names[0]]), "gamma": g.gamma, "steps_per_repeat": s.train_steps}

    rec.check("timing (variants interleaved)", timing)
    _speed_rows(rec, names, times, mem, batch=s.batch, per="s_per_kimg")
    return rec.result(summary=_ratio_summary(rec))


def _train_memory(ctx: Context, args: argparse.Namespace, name: str) -> float | None:
    import bench_training

    tr, reals = bench_training.make(args, name)
    reset_peak(ctx.device)
    for _ in range(max(ctx.sizes.train_steps, 1)):  # from step 0: includes an R1 and a path-length step
        tr.train_step(reals)
    sync(ctx.device)
    return peak_gib(ctx.device)


# ----------------------------------------------------------------------------------------------------------
# The inversion protocol: 100 images x 1000 steps at 256 px in W.

def part_inversion(ctx: Context) -> dict[str, Any]:
    """Image-steps per second of `invert` (LPIPS-VGG, W, 256 px overparam): the protocol's 100 images at once,
    under bf16 autocast too, and batch 1 for the ratio; projected to 100 x 1000 steps."""
    import bench_inversion

    rec = Recorder(ctx)
    s = ctx.sizes
    torch.backends.cudnn.benchmark = False  # as `opstylegan invert` runs
    lpips, which = make_lpips(ctx)
    rec.notes.append(f"LPIPS weights: {which} (speed does not depend on them); random generator weights")
    torch.manual_seed(0)
    G = Generator(gen_config(ctx, True)).to(ctx.device).eval()
    rates: dict[str, float] = {}

    def measure(batch: int, steps: int, dtype: torch.dtype | None, key: str) -> dict[str, Any]:
        reset_peak(ctx.device)
        for b in (batch, batch // 2):
            try:
                rate = bench_inversion.measure(G, lpips, "W", b, steps, s.inv_warmup, dtype)
                break
            except torch.cuda.OutOfMemoryError:
                rec.notes.append(f"batch {b} ({key}): out of memory")
                free_memory(ctx.device)
        else:
            raise CheckFailed(f"out of memory at batch {batch} and {batch // 2}")
        rates[key] = rate
        return {"batch": b, "image_steps_per_s": rate, "s_for_100x1000": 100 * 1000 / rate,
                "peak_gib": peak_gib(ctx.device)}

    rec.check("invert, W, batched", lambda: measure(s.inv_batch, s.inv_steps, None, "batched"), autocast="none")
    if s.inv_bf16 and ctx.left() > 0:
        rec.check("invert, W, batched", lambda: measure(s.inv_batch, s.inv_steps, torch.bfloat16, "batched-bf16"),
                  autocast="bfloat16")
    elif not s.inv_bf16:
        rec.notes.append("bf16 autocast: not timed in the dry run (emulated on this CPU)")
    if ctx.left() > 0:
        rec.check("invert, W, one by one", lambda: measure(1, s.inv_steps_b1, None, "one"), autocast="none")
    summary = ""
    if "batched" in rates:
        best = max(v for k, v in rates.items() if k.startswith("batched"))
        summary = (f"100 x 1000 steps projected to {100 * 1000 / best:.0f} s (goal {INVERSION_GOAL_S:.0f} s)"
                   + (f"; batched / one-by-one x{rates['batched'] / rates['one']:.1f}" if "one" in rates else ""))
    return rec.result(summary=summary)


# ----------------------------------------------------------------------------------------------------------
# Fashion-MNIST 32x32: both models trained side by side, then FID.

def part_fmnist(ctx: Context) -> dict[str, Any]:
    """Baseline and overparam (same preset, batch, seed) trained in alternating chunks until the part's time
    is used, so both reach the same kimg; G_ema of each comes back as a model folder (in a .tar), with a grid
    of fakes and, when this machine has the Inception weights, their FID (1000 generated vs 1000 train)."""
    rec = Recorder(ctx)
    if ctx.fmnist is None:
        return {"status": "skipped", "summary": "no --fmnist folder given", "rows": [], "notes": []}
    s = ctx.sizes
    state: dict[str, Any] = {}
    rec.check("build the dataset (IDX -> 32x32, pad)", lambda: _fm_dataset(ctx, state))
    if "dataset" not in state:
        return rec.result()
    rec.check("train side by side", lambda: _fm_train(ctx, rec, state))
    if "trainers" not in state:
        return rec.result()
    for overparam, tr in state["trainers"].items():
        rec.check("save G_ema", lambda o=overparam, t=tr: _fm_save(ctx, o, t), model=variant_name(overparam))
    rec.check("fakes grid (left: baseline, right: overparam; seeds 0..31)", lambda: _fm_grid(ctx, state))
    rec.check("FID (1000 generated vs the first 1000 train images)" if s.fid_num == 1000 else
              f"FID ({s.fid_num} generated vs {s.fid_num} train images)", lambda: _fm_fid(ctx, rec, state))
    kimg = state["trainers"][False].cur_nimg / 1000
    fid = state.get("fid", {})
    summary = f"{kimg:g} kimg each" + (", FID " + " / ".join(f"{fid[o]:.2f}" for o in (False, True))
                                       + " (baseline / overparam)" if len(fid) == 2 else ", FID not measured here")
    # Every chunk's stats (kimg, sec/kimg, mean losses, ADA p) per model, to compare with the CPU-trained runs.
    return rec.result(summary=summary, history=state.get("history", {}))


def _fm_dataset(ctx: Context, state: dict[str, Any]) -> dict[str, Any]:
    from opstylegan.data import ImageDataset, build_dataset

    dest = ctx.scratch / "fmnist32"
    report = build_dataset(ctx.fmnist, dest, resolution=32, channels=1, fit="pad", split="train",
                           max_images=ctx.sizes.fm_max_images)
    state["dataset"] = ImageDataset(dest)
    return {"images": report.count, "source": str(ctx.fmnist)}


def _fm_train(ctx: Context, rec: Recorder, state: dict[str, Any]) -> dict[str, Any]:
    from opstylegan.metrics.weights import WeightsError, inception_path
    from opstylegan.training.config import TrainConfig
    from opstylegan.training.distributed import DistInfo
    from opstylegan.training.loop import Trainer

    s = ctx.sizes
    ds = state["dataset"]
    try:
        inception_path()
        fid_s = 40.0 if ctx.cuda else 15.0
    except WeightsError:
        fid_s = 0.0
    stop = ctx.deadline - (10.0 + fid_s)  # saving and the grid, then FID, after training
    trainers = {}
    for overparam in (False, True):
        cfg = TrainConfig(data=str(ds.path), preset=s.fm_preset, overparam=overparam, batch=s.fm_batch, seed=0,
                          workers=0, kimg=s.fm_chunk_kimg, tick_kimg=s.fm_chunk_kimg)
        trainers[overparam] = Trainer(cfg, info=DistInfo(device=ctx.device), dataset=ds)
    state["trainers"] = trainers
    ticks: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    t_start = time.perf_counter()
    pair = 0.0
    target = 0.0
    while s.fm_max_chunks is None or len(ticks[False]) < s.fm_max_chunks:
        target += s.fm_chunk_kimg
        t0 = time.perf_counter()
        for overparam, tr in trainers.items():
            tr.cfg = tr.cfg.replace(kimg=target)
            ticks[overparam].append(tr.run(None))
        pair = time.perf_counter() - t0
        if time.time() + pair * 1.2 > stop:
            break
    state["ticks"] = ticks
    fig: dict[str, Any] = {"kimg_each": target, "wall_s": time.perf_counter() - t_start,
                           "preset": s.fm_preset, "batch": s.fm_batch}
    for overparam, tl in ticks.items():
        last = tl[-1]
        name = variant_name(overparam)
        rec.rows.append({"check": "trained", "model": name, "ok": True, "kimg": last["kimg"], "steps": last["step"],
                         "sec_per_kimg": statistics.median(t["sec_per_kimg"] for t in tl),
                         **{f"loss_{k}": v for k, v in last["loss"].items()}, "ada_p": last["ada_p"],
                         "gpu_peak_mem_gb": max((t.get("gpu_peak_mem_gb") or 0) for t in tl) or None})
        state.setdefault("history", {})[name] = [{"kimg": t["kimg"], "sec_per_kimg": t["sec_per_kimg"],
                                                  "loss": t["loss"], "ada_p": t["ada_p"]} for t in tl]
    return fig


def _fm_save(ctx: Context, overparam: bool, tr) -> dict[str, Any]:
    """G_ema as a model folder in a .tar under `out`. float16 weights: a float32 small-preset G (16.7 MB)
    is over the 16 MiB that one returned file may have."""
    name = FMNIST_NAMES[overparam]
    folder = tr.G_ema.save_pretrained(ctx.scratch / name, dtype=torch.float16,
                                      metadata={"kimg": tr.cur_nimg / 1000, "trained_by": "benchmarks/gpu_check.py",
                                                "training_config": tr.cfg.to_json_dict()})
    tar = ctx.out / f"{name}.tar"
    with tarfile.open(tar, "w") as t:
        t.add(folder, arcname=name)
    return {"file": tar.name, "mib": round(tar.stat().st_size / 2**20, 2), "dtype": "float16"}


def _fm_grid(ctx: Context, state: dict[str, Any]) -> dict[str, Any]:
    from opstylegan.data.images import make_grid, save_image

    grids = []
    with torch.no_grad():
        for tr in state["trainers"].values():
            G = tr.G_ema
            grids.append(make_grid(G(G.z_from_seeds(list(range(32)))).cpu(), ncols=8))
    gap = np.zeros((grids[0].shape[0], 8, grids[0].shape[2]), np.uint8)
    save_image(ctx.out / FAKES_NAME, np.concatenate([grids[0], gap, grids[1]], axis=1))
    return {"file": FAKES_NAME}


def _fm_fid(ctx: Context, rec: Recorder, state: dict[str, Any]) -> dict[str, Any]:
    from opstylegan.data import dataset_batches
    from opstylegan.metrics.fid import compute_feature_stats, compute_generator_stats, fid_from_stats
    from opstylegan.metrics.inception import InceptionFeatures
    from opstylegan.metrics.weights import MissingWeightsError

    n = ctx.sizes.fid_num
    names = " ".join(f"{FMNIST_NAMES[o]}.tar" for o in (False, True))
    later = (f"measure it where the weights are: for f in {names}; do tar -xf $f -C out/gpu; done; then for each "
             f"model: opstylegan metrics --model out/gpu/<name> --data data/fmnist32 --metrics fid,ppl --num {n} "
             f"--num-real {n} --num-ppl 500 --ppl-space w --ppl-sampling end --seed 0 --batch 20 "
             f"--out out/gpu/<name>.json (docs/RESULTS.md's protocol)")
    try:
        detector = InceptionFeatures().to(ctx.device)
    except MissingWeightsError as e:
        rec.notes.append(f"FID not measured on this machine ({str(e).split(':')[0]}); {later}")
        return {"fid": "not measured (no Inception weights here)"}
    import warnings

    ds = state["dataset"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample FID bias warning: the protocol is stated in the row
        real = compute_feature_stats(dataset_batches(ds, min(n, len(ds)), 100), detector)
        fig: dict[str, Any] = {"num_fake": n, "num_real": real.num_items}
        fids = {}
        for overparam, tr in state["trainers"].items():
            fake = compute_generator_stats(tr.G_ema, detector, n, batch_size=100, seed=0, device=ctx.device)
            fids[overparam] = fid_from_stats(real, fake).fid
            fig[f"fid_{variant_name(overparam)}"] = fids[overparam]
    state["fid"] = fids
    return fig


MEASURING_PARTS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "speed_g": part_speed_g,
    "speed_train": part_speed_train,
    "inversion": part_inversion,
    "fmnist": part_fmnist,
}
