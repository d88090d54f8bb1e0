"""The training loop: stylegan2-ada's four phases (G main, lazy path length, D main, lazy R1) per step.

`Trainer` owns the networks, optimizers, ADA, counters and RNGs, and can be saved and restored exactly
(`state_dict` / `load_state_dict`); `Trainer.run` trains until `cfg.kimg`, writing stats, image grids and
snapshots into a run folder (rank 0 only). `train` is the whole job: new run folder or resume, then run.
The library never prints: it reports through `progress(cur_nimg, total_nimg, info)` after every step and
`callback(event, data)` at ticks ("tick"), snapshots ("snapshot") and on start ("start").
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from opstylegan.config import ConfigError
from opstylegan.data.build import META_FILE
from opstylegan.data.dataset import ImageDataset, InfiniteSampler, check_raw_training_images
from opstylegan.data.images import save_grid
from opstylegan.io.atomic import write_text
from opstylegan.io.lock import RunLock
from opstylegan.models.discriminator import Discriminator
from opstylegan.models.generator import Generator
from opstylegan.training import loss as L
from opstylegan.training import state as S
from opstylegan.training.augment import AdaptiveAugment, AugmentPipe
from opstylegan.training.config import TrainConfig
from opstylegan.training.distributed import (
    DistInfo,
    barrier,
    broadcast_module,
    broadcast_object,
    gather_objects,
    mean_over_ranks,
    rank_seed,
    sync_grads,
)
from opstylegan.training.ema import ema_beta, update_ema
from opstylegan.training.snapshot_fid import SnapshotFID
from opstylegan.training.upcycle import g_frozen, load_init_weights, row_spread

ProgressFn = Callable[[int, int, dict[str, float]], None]
CallbackFn = Callable[[str, dict[str, Any]], None]
LOSS_TERMS = ("Gmain", "Gpl", "Dmain", "Dr1")
CONFIG_NAME = "config.json"
STATS_NAME = "stats.jsonl"


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or infinite; the message names the term, the step and the kimg."""

    def __init__(self, term: str, value: float, step: int, cur_nimg: int) -> None:
        self.term, self.value, self.step, self.cur_nimg = term, value, step, cur_nimg
        what = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        super().__init__(f"loss {term} is {what} at step {step} (kimg {cur_nimg / 1000:.3f}); training stopped, "
                         f"the last good snapshot is kept")


def lazy_adam(params: list[nn.Parameter], *, lr: float, betas: tuple[float, float], eps: float,
              reg_interval: int | None) -> torch.optim.Adam:
    """Adam with the lazy-regularization correction: lr *= c, betas **= c, c = interval / (interval + 1)."""
    c = reg_interval / (reg_interval + 1) if reg_interval else 1.0
    return torch.optim.Adam(params, lr=lr * c, betas=(betas[0] ** c, betas[1] ** c), eps=eps)


def images_to_float(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32 in [-1, 1] on `device`."""
    return batch.to(device, non_blocking=True).to(torch.float32) / 127.5 - 1


def open_training_set(cfg: TrainConfig) -> ImageDataset:
    if not cfg.data:
        raise ValueError("TrainConfig.data is empty; give the dataset folder built by `opstylegan dataset`")
    if Path(cfg.data).exists() and not (Path(cfg.data) / META_FILE).exists():
        check_raw_training_images(cfg.data)  # raw images: one trainable size, all readable, checked up front
    return ImageDataset(cfg.data, xflip=cfg.mirror)


class Trainer:
    """One training job's networks and state on one rank.

    Args:
        cfg: the run's config; resolved here against the dataset and world size if it is not yet.
        info: rank / world size / device (`init_distributed`); one CPU process by default.
        dataset: the training images; opened from `cfg.data` when None.
        init_weights: load `cfg.init_from` / `cfg.init_d` (False when a training state is loaded next).
    """

    def __init__(self, cfg: TrainConfig, *, info: DistInfo | None = None, dataset: ImageDataset | None = None,
                 init_weights: bool = True) -> None:
        self.info = info or DistInfo()
        self.device = self.info.device
        self.dataset = dataset if dataset is not None else open_training_set(cfg)
        if not cfg.is_resolved:
            cfg = cfg.resolve(img_resolution=self.dataset.resolution, img_channels=self.dataset.num_channels,
                              world_size=self.info.world_size)
        else:
            cfg.resolve(img_resolution=self.dataset.resolution, img_channels=self.dataset.num_channels,
                        world_size=self.info.world_size)  # checks the dataset shape and batch divisibility
        self.cfg = cfg
        assert cfg.batch is not None and cfg.gamma is not None and cfg.lr is not None and cfg.ema_kimg is not None
        self.batch_gpu = cfg.batch // self.info.world_size

        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank (then broadcast anyway)
        from opstylegan.config import DiscriminatorConfig, GeneratorConfig

        self.G = Generator(GeneratorConfig.from_dict(cfg.generator or {})).to(self.device).train()
        self.D = Discriminator(DiscriminatorConfig.from_dict(cfg.discriminator or {})).to(self.device).train()
        broadcast_module(self.G, self.info)
        broadcast_module(self.D, self.info)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        if cfg.init_from is not None and init_weights:  # every rank reads the same files
            load_init_weights(cfg, self.G, self.G_ema, self.D)

        self.pl_enabled = cfg.pl_weight > 0
        self.r1_enabled = cfg.gamma > 0
        self.opt_G = lazy_adam(list(self.G.parameters()), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                               reg_interval=cfg.pl_interval if self.pl_enabled else None)
        self.opt_D = lazy_adam(list(self.D.parameters()), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                               reg_interval=cfg.r1_interval if self.r1_enabled else None)
        self.augment_pipe: AugmentPipe | None = None
        self.ada: AdaptiveAugment | None = None
        if cfg.aug == "ada":
            self.augment_pipe = AugmentPipe(cfg.aug_pipe, p=0.0).to(self.device)
            self.ada = AdaptiveAugment(self.augment_pipe, batch_size=cfg.batch, target=cfg.ada_target,
                                       interval=cfg.ada_interval, ada_kimg=cfg.ada_kimg)
        self.pl_mean = torch.zeros([], device=self.device)

        # Every random draw of the loop comes from these two generators (per rank), so they are all the
        # state an exact resume needs: z / noise on the device, augmentation parameters on the CPU.
        self.gen = torch.Generator(self.device).manual_seed(rank_seed(cfg.seed, self.info.rank))
        self.aug_gen = torch.Generator().manual_seed(rank_seed(cfg.seed + 1, self.info.rank))
        self.cur_nimg = 0
        self.batch_idx = 0
        self.cur_tick = 0
        self._tick_sums: dict[str, list[float]] = {k: [] for k in LOSS_TERMS}
        self.fid: SnapshotFID | None = None
        if cfg.fid_num > 0:  # on every rank: each one embeds its share of the images
            self.fid = SnapshotFID(self.dataset, cfg.data, num_fake=cfg.fid_num, num_real=cfg.fid_real_num,
                                   batch_size=self.batch_gpu, device=self.device, info=self.info,
                                   pr=cfg.snapshot_pr)

    # -- one step ---------------------------------------------------------------------------------------
    def _run_D(self, img: torch.Tensor) -> torch.Tensor:
        if self.augment_pipe is not None:
            img = self.augment_pipe(img, generator=self.aug_gen)
        return self.D(img)

    def _sample_ws(self, n: int, *, update_emas: bool = False) -> torch.Tensor:
        return L.sample_ws(self.G, n, mixing_prob=self.cfg.style_mixing_prob, update_emas=update_emas,
                           generator=self.gen, device=self.device, spread=row_spread(self.cfg, self.cur_nimg))

    def _finish_phase(self, term: str, loss: torch.Tensor, module: nn.Module, opt: torch.optim.Optimizer) -> None:
        """All-reduce the gradients (and the loss), stop on a non-finite loss, then take the optimizer step."""
        params = list(module.parameters())
        value = sync_grads(params, loss, self.info)
        if not math.isfinite(value):
            raise TrainingDiverged(term, value, self.batch_idx, self.cur_nimg)
        opt.step()
        self._tick_sums[term].append(value)

    def _phase(self, module: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.G.requires_grad_(module is self.G)
        self.D.requires_grad_(module is self.D)
        opt.zero_grad(set_to_none=False)

    def train_step(self, reals: torch.Tensor) -> None:
        """One step of `cfg.batch` images over all ranks; `reals` is this rank's float batch [batch_gpu, C, H, W]."""
        cfg = self.cfg
        b = self.batch_gpu
        if reals.shape[0] != b:
            raise ValueError(f"train_step expects {b} real images on this rank, got {reals.shape[0]}")

        # w_avg follows the mapping's output whenever it runs on a training latent: in G main, G reg and D main,
        # as stylegan2-ada's mapping does in training mode (~2.25 updates per step; the mixing latent never).
        # G main: non-saturating loss. Skipped (with G reg) during a D warm-up: only D learns then.
        train_g = not g_frozen(cfg, self.cur_nimg)
        if train_g:
            self._phase(self.G, self.opt_G)
            fake = self.G.synthesis_ws(self._sample_ws(b, update_emas=True))
            loss = L.g_nonsaturating_loss(self._run_D(fake))
            loss.backward()
            self._finish_phase("Gmain", loss, self.G, self.opt_G)
            self._sync_w_avg()

        # G reg: lazy path-length regularizer on a shrunk batch, scaled by its interval.
        if train_g and self.pl_enabled and self.batch_idx % cfg.pl_interval == 0:
            self._phase(self.G, self.opt_G)
            n = max(b // cfg.pl_batch_shrink, 1)
            ws = self._sample_ws(n, update_emas=True)
            self._sync_w_avg()
            img = self.G.synthesis_ws(ws)
            lengths = L.path_lengths(img, ws, rows=cfg.pl_rows, generator=self.gen)
            self.pl_mean = L.update_pl_mean(self.pl_mean, mean_over_ranks(lengths.mean(), self.info), cfg.pl_decay)
            penalty = L.path_length_penalty(lengths, self.pl_mean)
            # The `img[:, 0, 0, 0] * 0` term keeps every G parameter in the graph (as stylegan2-ada).
            loss = (img[:, 0, 0, 0] * 0 + penalty * cfg.pl_weight).mean() * cfg.pl_interval
            loss.backward()
            self._finish_phase("Gpl", loss, self.G, self.opt_G)

        # D main: logistic loss on (augmented) fakes and reals; ADA watches sign(D(real)).
        self._phase(self.D, self.opt_D)
        with torch.no_grad():
            fake = self.G.synthesis_ws(self._sample_ws(b, update_emas=train_g))
        self._sync_w_avg()
        fake_logits = self._run_D(fake)
        real_logits = self._run_D(reals)
        if self.ada is not None:
            self.ada.accumulate(real_logits)
        loss = L.d_logistic_loss(real_logits, fake_logits)
        loss.backward()
        self._finish_phase("Dmain", loss, self.D, self.opt_D)

        # D reg: lazy R1 on reals (gradient through the augmentation), scaled by its interval.
        if self.r1_enabled and self.batch_idx % cfg.r1_interval == 0:
            self._phase(self.D, self.opt_D)
            real = reals.detach().requires_grad_(True)
            real_logits = self._run_D(real)
            if self.ada is not None:
                self.ada.accumulate(real_logits)
            penalty = L.d_r1_penalty(real_logits, real)
            loss = (real_logits[:, 0] * 0 + penalty * (cfg.gamma / 2)).mean() * cfg.r1_interval
            loss.backward()
            self._finish_phase("Dr1", loss, self.D, self.opt_D)

        # Bookkeeping: EMA (with ramp-up), counters, ADA adjustment.
        if train_g:
            update_ema(self.G_ema, self.G, ema_beta(cfg.batch, self.cur_nimg, cfg.ema_kimg, cfg.ema_rampup))
        self.cur_nimg += cfg.batch
        self.batch_idx += 1
        if self.ada is not None:
            self.ada.step()

    def _sync_w_avg(self) -> None:
        """w_avg moved with this rank's batch; the rank mean equals the update with the global batch."""
        if self.info.enabled:
            w_avg = self.G._mapping.w_avg
            w_avg.copy_(mean_over_ranks(w_avg, self.info))

    # -- state ------------------------------------------------------------------------------------------
    def rank_state(self) -> dict[str, Any]:
        """What differs between ranks: RNGs and ADA's pending statistic."""
        return {"gen": self.gen.get_state(), "aug_gen": self.aug_gen.get_state(), "global_rng": S.capture_global_rng(),
                "ada": self.ada.state_dict() if self.ada is not None else None}

    def state_dict(self, rank_states: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The full training state (tensors and plain containers; loads with weights_only=True)."""
        return {
            "config": self.cfg.to_json_dict(),
            "cur_nimg": self.cur_nimg, "batch_idx": self.batch_idx, "cur_tick": self.cur_tick,
            "world_size": self.info.world_size,
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "pl_mean": self.pl_mean.detach().cpu(),
            "best_fid": self.fid.best_fid if self.fid is not None else math.inf,
            "sampler": self._sampler().state_dict(),
            "ranks": rank_states if rank_states is not None else [self.rank_state()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict()` exactly (same world size), or all but the RNG streams (other world size)."""
        saved = TrainConfig.from_dict(state["config"])
        if saved.replace(kimg=self.cfg.kimg) != self.cfg.replace(kimg=self.cfg.kimg):
            diff = {k: (v, self.cfg.to_json_dict()[k]) for k, v in saved.to_json_dict().items()
                    if k != "kimg" and self.cfg.to_json_dict()[k] != v}
            raise S.StateError(f"the training state was made with another config; differences (state, now): {diff}")
        self.G.load_state_dict(state["G"], strict=True)
        self.D.load_state_dict(state["D"], strict=True)
        self.G_ema.load_state_dict(state["G_ema"], strict=True)
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.pl_mean = state["pl_mean"].to(self.device)
        self.cur_nimg, self.batch_idx, self.cur_tick = state["cur_nimg"], state["batch_idx"], state["cur_tick"]
        if self.fid is not None:
            self.fid.best_fid = float(state.get("best_fid", math.inf))
        try:  # the same data in the same order: refuses a dataset that changed size since the state was saved
            self._sampler().load_state_dict(state["sampler"])
        except ValueError as e:
            raise S.StateError(f"cannot resume the data stream: {e} (was the dataset {self.cfg.data!r} rebuilt or "
                               f"--mirror changed?)") from None
        ranks = state["ranks"]
        if state["world_size"] == self.info.world_size and len(ranks) == self.info.world_size:
            mine = ranks[self.info.rank]
            self.gen.set_state(mine["gen"])
            self.aug_gen.set_state(mine["aug_gen"])
            S.restore_global_rng(mine["global_rng"])
            if self.ada is not None:
                self.ada.load_state_dict(mine["ada"])
        else:  # another world size: continue with fresh per-rank streams (not bit-exact, documented)
            self.gen.manual_seed(rank_seed(self.cfg.seed + self.cur_nimg, self.info.rank))
            self.aug_gen.manual_seed(rank_seed(self.cfg.seed + 1 + self.cur_nimg, self.info.rank))
            if self.ada is not None:
                ada = dict(ranks[0]["ada"], sign_sum=0.0, sign_count=0)
                self.ada.load_state_dict(ada)

    # -- the run ----------------------------------------------------------------------------------------
    def _sampler(self) -> InfiniteSampler:
        """This rank's shard of the global image stream, positioned at the images seen so far (cur_nimg)."""
        return InfiniteSampler(self.dataset, rank=self.info.rank, world_size=self.info.world_size,
                               seed=self.cfg.seed, start_index=self.cur_nimg)

    def _loader(self) -> DataLoader:
        sampler = self._sampler()
        # Its own generator: creating the iterator would otherwise draw from the global torch RNG.
        base_seed = torch.Generator().manual_seed(rank_seed(self.cfg.seed + 2, self.info.rank))
        return DataLoader(self.dataset, sampler=sampler, batch_size=self.batch_gpu, num_workers=self.cfg.workers,
                          pin_memory=self.device.type == "cuda", generator=base_seed,
                          prefetch_factor=2 if self.cfg.workers > 0 else None)

    def run(self, run_dir: str | os.PathLike[str] | None = None, *, progress: ProgressFn | None = None,
            callback: CallbackFn | None = None) -> dict[str, Any]:
        """Trains until cfg.kimg. With a run folder, rank 0 writes stats.jsonl, grids, snapshots and states.

        Returns the last tick's stats. Raises TrainingDiverged on a NaN/inf loss (no snapshot is written).
        """
        run_dir = Path(run_dir) if run_dir is not None else None
        main = self.info.is_main and run_dir is not None
        total = self.cfg.total_nimg
        if main and self.cur_nimg == 0:
            self._write_reals(run_dir)  # type: ignore[arg-type]
            self._write_fakes(run_dir / "fakes-init.png")  # type: ignore[operator]
        if callback is not None:
            callback("start", {"cur_nimg": self.cur_nimg, "total_nimg": total, "config": self.cfg.to_json_dict()})
        last: dict[str, Any] = {}
        if self.cur_nimg >= total:
            return last
        batches = iter(self._loader())
        tick_start_nimg, tick_start = self.cur_nimg, time.perf_counter()
        self._reset_peak_memory()
        while True:
            reals = images_to_float(next(batches), self.device)
            self.train_step(reals)
            done = self.cur_nimg >= total
            if progress is not None:
                elapsed = time.perf_counter() - tick_start
                kimg_done = (self.cur_nimg - tick_start_nimg) / 1000
                progress(self.cur_nimg, total, {
                    "kimg": self.cur_nimg / 1000, "sec_per_kimg": elapsed / max(kimg_done, 1e-9),
                    **{k: v[-1] for k, v in self._tick_sums.items() if v},
                    "ada_p": self.ada.p if self.ada is not None else 0.0})
            if not done and self.cur_nimg < tick_start_nimg + self.cfg.tick_kimg * 1000:
                continue
            tick_sec = time.perf_counter() - tick_start
            self.cur_tick += 1
            last = self._tick_stats(tick_sec, (self.cur_nimg - tick_start_nimg) / 1000)
            if main:
                with open(run_dir / STATS_NAME, "a", encoding="utf-8") as f:  # type: ignore[operator]
                    f.write(json.dumps(last) + "\n")
            if callback is not None:
                callback("tick", last)
            if done or self.cur_tick % self.cfg.snap == 0:
                info = self.snapshot(run_dir)
                if callback is not None and info:
                    callback("snapshot", info)
            tick_start_nimg, tick_start = self.cur_nimg, time.perf_counter()
            self._reset_peak_memory()
            if done:
                return last

    def _tick_stats(self, tick_sec: float, tick_kimg: float) -> dict[str, Any]:
        losses = {k: (sum(v) / len(v) if v else None) for k, v in self._tick_sums.items()}
        self._tick_sums = {k: [] for k in LOSS_TERMS}
        stats: dict[str, Any] = {
            "tick": self.cur_tick, "kimg": round(self.cur_nimg / 1000, 3), "step": self.batch_idx,
            "sec_per_tick": round(tick_sec, 4), "sec_per_kimg": round(tick_sec / max(tick_kimg, 1e-9), 4),
            "loss": losses, "ada_p": self.ada.p if self.ada is not None else None,
            "ada_rt": self.ada.rt if self.ada is not None else None, "pl_mean": float(self.pl_mean),
            "cpu_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 4),
            "timestamp": time.time(),
        }
        if self.device.type == "cuda":
            stats["gpu_peak_mem_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 4)
        return stats

    def _reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    # -- outputs ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _write_fakes(self, path: Path) -> None:
        seeds = list(range(self.cfg.grid_size))
        spread = row_spread(self.cfg, self.cur_nimg)  # upcycling: the rows as training draws them now
        images = [self.G_ema(self.G_ema.z_from_seeds(seeds[i:i + self.batch_gpu], spread=spread))
                  for i in range(0, len(seeds), self.batch_gpu)]
        save_grid(path, torch.cat(images), ncols=_grid_cols(len(seeds)))  # float [N, C, H, W] in [-1, 1]

    def _write_reals(self, run_dir: Path) -> None:
        n = min(self.cfg.grid_size, len(self.dataset))
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.cfg.seed))[:n]
        images = torch.stack([self.dataset[int(i)] for i in order])  # uint8 [n, C, H, W]
        save_grid(run_dir / "reals.png", images, ncols=_grid_cols(n))

    def snapshot(self, run_dir: Path | None) -> dict[str, Any]:
        """Writes network-<kimg>/ (G_ema), network-latest/, fakes-<kimg>.png and state-<kimg>.pt (rank 0);
        with cfg.fid_num, also the snapshot's FID (metrics.jsonl) and network-best/."""
        rank_states = gather_objects(self.rank_state(), self.info)
        info: dict[str, Any] = {}
        tag = S.kimg_tag(self.cur_nimg)
        # FID first, on every rank (the images are shared out; rank 0 writes metrics.jsonl and network-best/),
        # and before the state is saved, so that the state's best_fid includes this snapshot.
        fid = (self.fid.at_snapshot(run_dir, self.G_ema, self.cur_nimg / 1000, f"network-{tag}")
               if self.fid is not None and run_dir is not None else None)
        if run_dir is not None and self.info.is_main:
            meta = {"kimg": self.cur_nimg / 1000, "step": self.batch_idx, "training_config": self.cfg.to_json_dict()}
            network = self.G_ema.save_pretrained(run_dir / f"network-{tag}", metadata=meta)
            self._write_fakes(run_dir / f"fakes-{tag}.png")
            state = S.save_state(S.state_path(run_dir, self.cur_nimg), self.state_dict(rank_states))  # type: ignore[arg-type]
            self.G_ema.save_pretrained(run_dir / "network-latest", metadata=meta)
            write_text(run_dir / "latest.json", json.dumps(
                {"kimg": self.cur_nimg / 1000, "network": network.name, "state": state.name}, indent=2) + "\n")
            S.prune_states(run_dir, keep=2)
            info = {"kimg": self.cur_nimg / 1000, "network": str(network), "state": str(state)}
            if fid is not None:
                info["fid"] = fid
        barrier(self.info)
        return info


def _grid_cols(n: int) -> int:
    return max(1, min(n, 8))


# -- run folders ---------------------------------------------------------------------------------------

def next_run_dir(outdir: str | os.PathLike[str], dataset_name: str, overparam: bool) -> Path:
    """outdir/NNNNN-<dataset>-<baseline|overparam>, NNNNN one more than the largest existing number."""
    outdir = Path(outdir)
    ids = [int(m.group(1)) for p in (outdir.iterdir() if outdir.is_dir() else [])
           if (m := re.match(r"^(\d+)-", p.name))]
    name = re.sub(r"[^A-Za-z0-9_.]+", "_", dataset_name).strip("_") or "data"
    return outdir / f"{max(ids, default=-1) + 1:05d}-{name}-{'overparam' if overparam else 'baseline'}"


def read_run_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: is {str(run_dir)!r} a run folder of `opstylegan train`?")
    try:
        d = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise S.StateError(f"{str(path)!r} is not valid JSON: {e}") from None
    if isinstance(d, dict) and "pl_rows" not in d:
        # Written before pl_rows existed: those runs averaged the path length over rows; resume them as such.
        d = {**d, "pl_rows": "mean"}
    return TrainConfig.from_dict(d)


def _abs_model_ref(ref: str | None) -> str | None:
    """A model folder -> its absolute path (the run's config must not depend on the cwd); shipped names stay."""
    from opstylegan.pretrained import SHIPPED

    if ref is None or ref in SHIPPED:
        return ref
    return str(Path(ref).resolve())


def _trim_stats(run_dir: Path, cur_nimg: int) -> int:
    """Drops stats lines written after the state we resume from (a run killed between snapshots), and lines that
    are not a complete JSON record (a kill or a full disk during the append leaves a half-written last line).
    Returns the number of incomplete lines dropped."""
    path = run_dir / STATS_NAME
    if not path.is_file():
        return 0
    keep, broken = [], 0
    for line in path.read_text("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            kimg = float(json.loads(line)["kimg"])
        except (ValueError, KeyError, TypeError):
            broken += 1
            continue
        if kimg <= cur_nimg / 1000 + 1e-9:
            keep.append(line)
    write_text(path, "".join(line + "\n" for line in keep))
    return broken


@dataclass
class TrainResult:
    run_dir: Path
    config: TrainConfig
    last_tick: dict[str, Any]
    resumed_from: Path | None


def train(cfg: TrainConfig | None = None, *, outdir: str | os.PathLike[str] | None = None,
          resume: str | os.PathLike[str] | None = None, kimg: float | None = None, info: DistInfo | None = None,
          progress: ProgressFn | None = None, callback: CallbackFn | None = None) -> TrainResult:
    """Train a new run (cfg + outdir) or continue one (resume = its run folder; kimg may extend it).

    A new run gets an auto-numbered folder under `outdir` with the resolved config.json. Resuming loads
    the run's config.json and its newest complete training state (callback("resume", ...) names it and
    any unreadable newer state that was skipped). The run folder is locked while trained (rank 0): a second
    `train` of the same run raises opstylegan.io.lock.RunLockedError naming the first, before touching it.
    """
    with contextlib.ExitStack() as locks:
        return _train(cfg, outdir, resume, kimg, info or DistInfo(), progress, callback, locks)


def _train(cfg: TrainConfig | None, outdir: str | os.PathLike[str] | None, resume: str | os.PathLike[str] | None,
           kimg: float | None, info: DistInfo, progress: ProgressFn | None, callback: CallbackFn | None,
           locks: contextlib.ExitStack) -> TrainResult:
    resumed_from = None
    if resume is not None:
        run_dir = Path(resume)
        if info.is_main and run_dir.is_dir():
            locks.enter_context(RunLock(run_dir))
        cfg = read_run_config(run_dir)
        if kimg is not None:
            cfg = cfg.replace(kimg=kimg)
        trainer = Trainer(cfg, info=info, init_weights=False)
        latest = S.find_latest_state(run_dir, map_location="cpu")
        trainer.load_state_dict(latest.state)
        resumed_from = latest.path
        if kimg is not None and kimg * 1000 < trainer.cur_nimg:  # refused before config.json is rewritten
            raise ConfigError(f"kimg={kimg:g} is below where the run {str(run_dir)!r} already is (kimg "
                              f"{trainer.cur_nimg / 1000:.3f}, {latest.path.name}); a run is never shortened: give "
                              f"kimg >= {trainer.cur_nimg / 1000:.3f}, or use one of its network-<kimg> snapshots")
        dropped = 0
        if info.is_main:
            dropped = _trim_stats(run_dir, trainer.cur_nimg)
            S.remove_stale_temporaries(run_dir)
        resume_info = {"state": str(latest.path), "cur_nimg": trainer.cur_nimg, "skipped": latest.skipped,
                       "dropped_stats_lines": dropped,
                       "exact": latest.state["world_size"] == info.world_size,
                       "saved_world_size": latest.state["world_size"]}
    else:
        if cfg is None or outdir is None:
            raise ValueError("train: give cfg and outdir for a new run, or resume=RUN_DIR")
        if kimg is not None:
            cfg = cfg.replace(kimg=kimg)
        cfg = cfg.replace(data=str(Path(cfg.data).resolve()), init_from=_abs_model_ref(cfg.init_from),
                          init_d=_abs_model_ref(cfg.init_d))
        trainer = Trainer(cfg, info=info)
        run_dir = None
        if info.is_main:
            run_dir = next_run_dir(outdir, Path(cfg.data).name, cfg.overparam)
            run_dir.mkdir(parents=True, exist_ok=False)
            locks.enter_context(RunLock(run_dir))
            write_text(run_dir / CONFIG_NAME, json.dumps(trainer.cfg.to_json_dict(), indent=2) + "\n")
        run_dir = Path(str(broadcast_object(str(run_dir), info)))
    if info.is_main and resume is not None:
        write_text(run_dir / CONFIG_NAME, json.dumps(trainer.cfg.to_json_dict(), indent=2) + "\n")
    if callback is not None:
        callback("run_dir", {"run_dir": str(run_dir)})
        if resume is not None:
            callback("resume", resume_info)
    last = trainer.run(run_dir, progress=progress, callback=callback)
    return TrainResult(run_dir, trainer.cfg, last, resumed_from)
