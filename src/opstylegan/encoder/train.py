"""Training an encoder for a fixed generator G, in a run folder that resumes exactly.

Every step draws ``batch`` real images from the dataset and ``batch`` generated pairs (z -> latent -> image
of G, the latent known), encodes all 2 x batch images and decodes the predictions with G (frozen). Loss:

    latent_weight * |(E(G(w)) - w) / w_std|^2                     (generated pairs: the latent is known)
  + lpips_weight  * LPIPS(G(E(x)), x)   + mse_weight * MSE(G(E(x)), x)   (real and generated images)
  + reg_weight    * mean over rows of relu(d^2(row) / C - tau)    (the prior: keeps the rows in-distribution)

LPIPS here is the AlexNet variant by default (``lpips_net``; as pSp trains its encoders): on a CPU it is ~20x
cheaper than the VGG variant the projector and the evaluation use, which stay VGG.

d^2 is the squared Mahalanobis distance of a predicted row under the mean and covariance of the rows G's
mapping produces, and tau the 99th percentile of d^2 / C over such rows: a row as typical as 99% of the
mapping's own rows costs nothing; only rows outside that shell are pulled back (toward the distribution,
not toward w_avg, so that the encoder is not pushed to the mean image).

Run folder (like ``opstylegan train``): config.json (resolved), stats.jsonl (one line per tick),
recon-<kimg>.png (fixed real images | their reconstructions), encoder-<kimg>/ and encoder-latest/
(safetensors + JSON, loadable with ``Encoder.from_pretrained``), state-<kimg>.pt (everything an exact
resume needs: encoder, Adam, counters, the z generator, the data position) and latest.json.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from opstylegan.config import ConfigError, _Config
from opstylegan.data.dataset import ImageDataset, InfiniteSampler
from opstylegan.data.images import save_grid
from opstylegan.encoder.model import ENCODER_SPACES, Encoder, MappingStatistics, mapping_statistics
from opstylegan.io.atomic import write_text
from opstylegan.latent import broadcast
from opstylegan.models.generator import Generator
from opstylegan.training import state as S
from opstylegan.training.loop import images_to_float, next_run_dir

__all__ = ["EncoderTrainConfig", "EncoderTrainer", "EncoderTrainResult", "LatentPrior", "train_encoder"]

CONFIG_NAME = "config.json"
STATS_NAME = "stats.jsonl"
STATE_KIND = "encoder"
LOSS_TERMS = ("latent", "lpips", "mse", "reg", "lpips_real", "total")
ProgressFn = Callable[[int, int, dict[str, float]], None]
CallbackFn = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class EncoderTrainConfig(_Config):
    """An encoder training run (the resolved form is the run folder's config.json).

    model: the generator's folder (or a shipped model's name; resolved to its folder).
    data: training images (a dataset built by ``opstylegan dataset``, or a folder / zip of images of G's size).
    space: ``"W"`` or ``"w+"``; None: W for overparameterized models, w+ for the baseline.
    kimg: length in thousands of real images (each step also uses as many generated pairs).
    batch: real images per step (plus as many generated pairs).
    lpips_net: the LPIPS network of the training loss, "alex" (cheap) or "vgg" (the projector's).
    channel_base, channel_max: encoder width (None: the generator's). features, num_basis: the head.
    tick_kimg / snap: one stats line per tick; a snapshot every ``snap`` ticks and at the end.
    generator_fingerprint: filled by resolve(); a resume refuses a model whose weights changed.
    """

    model: str = ""
    data: str = ""
    space: str | None = None
    kimg: float = 100.0
    batch: int = 16
    lr: float = 0.001
    adam_betas: tuple[float, float] = (0.9, 0.999)
    latent_weight: float = 1.0
    lpips_weight: float = 1.0
    mse_weight: float = 1.0
    reg_weight: float = 1.0
    lpips_net: str = "alex"
    channel_base: int | None = None
    channel_max: int | None = None
    features: int = 512
    num_basis: int = 32
    tick_kimg: float = 1.0
    snap: int = 10
    seed: int = 0
    mirror: bool = False
    generator_fingerprint: str = ""

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"EncoderTrainConfig: {name} must be {expected}, got {getattr(self, name)!r}")

        if self.lpips_net not in ("alex", "vgg"):
            raise bad("lpips_net", "'alex' or 'vgg'")
        if self.space is not None and self.space not in ENCODER_SPACES:
            raise bad("space", f"None or one of {list(ENCODER_SPACES)}")
        for k in ("kimg", "lr", "tick_kimg"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise bad(k, "a finite number > 0")
        for k in ("latent_weight", "lpips_weight", "mse_weight", "reg_weight"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise bad(k, "a finite number >= 0")
        if self.latent_weight + self.lpips_weight + self.mse_weight == 0:
            raise ConfigError("EncoderTrainConfig: latent_weight, lpips_weight and mse_weight are all 0; nothing "
                              "would teach the encoder")
        for k in ("batch", "snap", "features", "num_basis"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(k, "an int >= 1")
        for k in ("channel_base", "channel_max"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise bad(k, "None or an int >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", "an int >= 0")
        b = self.adam_betas
        if not (isinstance(b, (tuple, list)) and len(b) == 2 and all(0 <= float(x) < 1 for x in b)):
            raise bad("adam_betas", "two numbers in [0, 1)")
        object.__setattr__(self, "adam_betas", (float(b[0]), float(b[1])))

    @property
    def total_nimg(self) -> int:
        return round(self.kimg * 1000)


class LatentPrior(nn.Module):
    """The in-distribution penalty: rows far outside the mapping's distribution (module docstring)."""

    def __init__(self, stats: MappingStatistics, *, quantile: float = 0.99, num_rows: int = 16384,
                 seed: int = 1) -> None:
        super().__init__()
        c = stats.cov.shape[0]
        cov = stats.cov + 1e-6 * stats.cov.diagonal().mean() * torch.eye(c, dtype=stats.cov.dtype)
        whiten = torch.linalg.inv(torch.linalg.cholesky(cov))  # d^2 = |whiten (w - mean)|^2
        self.register_buffer("mean", stats.mean.float())
        self.register_buffer("whiten", whiten.float())
        self.register_buffer("threshold", torch.zeros([]))
        self.num_features = c
        self._seed, self._num_rows, self._quantile = seed, num_rows, quantile

    def calibrate(self, G: Generator) -> LatentPrior:
        """Sets the threshold tau to the ``quantile`` of d^2 / C over fresh rows of G's mapping."""
        with torch.no_grad():
            gen = torch.Generator().manual_seed(self._seed)
            n = -(-self._num_rows // G.rows)
            rows = G.mapping(G.sample_z(n, generator=gen)).reshape(-1, self.num_features).float()
            d2 = self.distances(rows.to(self.mean.device))
            self.threshold.fill_(float(torch.quantile(d2.double().cpu(), self._quantile)))
        return self

    def distances(self, rows: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance / C of every row, ``[..., C] -> [...]``."""
        return ((rows - self.mean) @ self.whiten.T).square().mean(dim=-1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Per-image penalty ``[B]``: mean over rows of relu(d^2 / C - tau)."""
        return (self.distances(latents) - self.threshold).relu().flatten(1).mean(dim=1)


class EncoderTrainer:
    """One encoder training job: the encoder, its optimizer, the frozen generator, counters and RNG.

    Args:
        cfg: the run's config (resolved here against G and the dataset if it is not).
        G: the generator (its device is used); it is never changed.
        dataset: the training images; opened from ``cfg.data`` when None.
        lpips: an LPIPS module (default: ``cfg.lpips_net`` with ``resize_to=256``).
    """

    def __init__(self, cfg: EncoderTrainConfig, G: Generator, *, dataset: ImageDataset | None = None,
                 lpips: nn.Module | None = None) -> None:
        self.G = G.eval().requires_grad_(False)
        self.device = G.w_avg.device
        self.dataset = dataset if dataset is not None else ImageDataset(cfg.data, xflip=cfg.mirror)
        if (self.dataset.num_channels, self.dataset.resolution) != (G.img_channels, G.img_resolution):
            raise ValueError(f"the dataset {cfg.data!r} has {self.dataset.num_channels}-channel "
                             f"{self.dataset.resolution}px images; the model makes {G.img_channels}-channel "
                             f"{G.img_resolution}px images (build a matching one with `opstylegan dataset`)")
        fingerprint = G.fingerprint()
        if cfg.generator_fingerprint and cfg.generator_fingerprint != fingerprint:
            raise S.StateError(f"the model {cfg.model!r} is not the one this run trains for (fingerprint "
                               f"{fingerprint[:12]}... instead of {cfg.generator_fingerprint[:12]}...): its weights "
                               f"changed since the run started; start a new run for the new model")
        self.cfg = cfg.replace(space=cfg.space or ("W" if G.overparam else "w+"), generator_fingerprint=fingerprint)
        from opstylegan.latent import check_space

        check_space(self.cfg.space, overparam=G.overparam)  # type: ignore[arg-type]
        stats = mapping_statistics(G)
        torch.manual_seed(self.cfg.seed)  # the encoder's initial weights
        self.E = Encoder.for_generator(G, space=self.cfg.space, stats=stats, channel_base=self.cfg.channel_base,
                                       channel_max=self.cfg.channel_max, features=self.cfg.features,
                                       num_basis=self.cfg.num_basis).train()
        self.prior = LatentPrior(stats).to(self.device).calibrate(G)
        if lpips is None:
            from opstylegan.metrics.lpips import LPIPS

            lpips = LPIPS(self.cfg.lpips_net, resize_to=256)
        self.lpips = lpips.to(self.device).requires_grad_(False)
        self.opt = torch.optim.Adam(self.E.parameters(), lr=self.cfg.lr, betas=self.cfg.adam_betas)
        self.gen = torch.Generator().manual_seed(self.cfg.seed + 1)  # z of the generated pairs (CPU)
        self.cur_nimg = 0
        self.step = 0
        self.cur_tick = 0
        self._sums: dict[str, list[float]] = {k: [] for k in LOSS_TERMS}

    # -- one step ---------------------------------------------------------------------------------------
    def _generated_pairs(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n (latent in the encoder's space, image) pairs of G, untruncated."""
        G, space = self.G, self.E.space
        with torch.no_grad():
            w = G.mapping(G.sample_z(n, generator=self.gen))  # [n, R, C] or [n, C]
            if space == "W":
                latent = w
            else:  # w+: one vector repeated per layer (row 0 of an overparam model's matrix)
                latent = broadcast(w[:, 0] if G.overparam else w, "w", "w+", num_ws=G.num_ws, rows=G.rows)
            images = G.synthesis(latent, space, force_fp32=True)
        return latent, images

    def train_step(self, reals: torch.Tensor) -> dict[str, float]:
        """One step on a float batch of real images ``[batch, C, H, W]`` in [-1, 1]; returns the loss terms."""
        cfg, b = self.cfg, reals.shape[0]
        latent, fakes = self._generated_pairs(b)
        x = torch.cat([fakes, reals.to(self.device)])  # [2b, C, H, W]
        pred = self.E(x)  # [2b, n, C]
        recon = self.G.synthesis(pred, self.E.space, force_fp32=True)
        lat = ((pred[:b] - latent) / self.E.w_std).square().mean()
        lp = self.lpips(recon, x)  # [2b]
        mse = ((recon - x) / 2).square().mean(dim=(1, 2, 3))  # [2b], images in [0, 1]
        reg = self.prior(pred)  # [2b]
        total = cfg.latent_weight * lat + cfg.lpips_weight * lp.mean() + cfg.mse_weight * mse.mean() + \
            cfg.reg_weight * reg.mean()
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        value = float(total.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"the encoder's loss is {value} at step {self.step} (kimg "
                                     f"{self.cur_nimg / 1000:.3f}); lower --lr")
        self.opt.step()
        self.cur_nimg += b
        self.step += 1
        lp, mse, reg = lp.detach(), mse.detach(), reg.detach()
        terms = {"latent": float(lat.detach()), "lpips": float(lp.mean()), "mse": float(mse.mean()),
                 "reg": float(reg.mean()), "lpips_real": float(lp[b:].mean()), "total": value}
        for k, v in terms.items():
            self._sums[k].append(v)
        return terms

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The full training state (tensors and plain containers; loads with weights_only=True)."""
        return {"kind": STATE_KIND, "config": self.config_json(), "cur_nimg": self.cur_nimg, "step": self.step,
                "cur_tick": self.cur_tick, "E": self.E.state_dict(), "opt": self.opt.state_dict(),
                "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != STATE_KIND:
            raise S.StateError("the state is not an encoder training state (was it written by `opstylegan train`?)")
        saved = EncoderTrainConfig.from_dict(_from_json(state["config"]))
        if saved.replace(kimg=self.cfg.kimg) != self.cfg.replace(kimg=self.cfg.kimg):
            diff = {k: (v, getattr(self.cfg, k)) for k, v in saved.to_dict().items()
                    if k != "kimg" and getattr(self.cfg, k) != v}
            raise S.StateError(f"the training state was made with another config; differences (state, now): {diff}")
        self.E.load_state_dict(state["E"], strict=True)
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.cur_nimg, self.step, self.cur_tick = state["cur_nimg"], state["step"], state["cur_tick"]

    def config_json(self) -> dict[str, Any]:
        d = self.cfg.to_dict()
        d["adam_betas"] = list(self.cfg.adam_betas)
        return d

    # -- the run ----------------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        sampler = InfiniteSampler(self.dataset, seed=self.cfg.seed, start_index=self.cur_nimg)
        return DataLoader(self.dataset, sampler=sampler, batch_size=self.cfg.batch, num_workers=0,
                          generator=torch.Generator().manual_seed(self.cfg.seed + 2))

    def run(self, run_dir: str | os.PathLike[str] | None = None, *, progress: ProgressFn | None = None,
            callback: CallbackFn | None = None) -> dict[str, Any]:
        """Trains until cfg.kimg; with a run folder, writes stats, reconstructions, snapshots and states.

        ``progress(cur_nimg, total_nimg, last_step_terms)`` after every step; ``callback(event, data)`` at
        "tick" and "snapshot". Returns the last tick's stats.
        """
        run_dir = Path(run_dir) if run_dir is not None else None
        total = self.cfg.total_nimg
        last: dict[str, Any] = {}
        if self.cur_nimg >= total:
            return last
        batches = iter(self._loader())
        tick_start_nimg, tick_start = self.cur_nimg, time.perf_counter()
        while True:
            terms = self.train_step(images_to_float(next(batches), self.device))
            done = self.cur_nimg >= total
            if progress is not None:
                progress(self.cur_nimg, total, terms)
            if not done and self.cur_nimg < tick_start_nimg + self.cfg.tick_kimg * 1000:
                continue
            tick_sec = time.perf_counter() - tick_start
            self.cur_tick += 1
            kimg = (self.cur_nimg - tick_start_nimg) / 1000
            last = {"tick": self.cur_tick, "kimg": round(self.cur_nimg / 1000, 3), "step": self.step,
                    "sec_per_tick": round(tick_sec, 4), "sec_per_kimg": round(tick_sec / max(kimg, 1e-9), 4),
                    "loss": {k: sum(v) / len(v) for k, v in self._sums.items() if v}, "timestamp": time.time()}
            self._sums = {k: [] for k in LOSS_TERMS}
            if run_dir is not None:
                with open(run_dir / STATS_NAME, "a", encoding="utf-8") as f:
                    f.write(json.dumps(last) + "\n")
            if callback is not None:
                callback("tick", last)
            if done or self.cur_tick % self.cfg.snap == 0:
                info = self.snapshot(run_dir)
                if callback is not None and info:
                    callback("snapshot", info)
            tick_start_nimg, tick_start = self.cur_nimg, time.perf_counter()
            if done:
                return last

    def snapshot(self, run_dir: Path | None) -> dict[str, Any]:
        """Writes encoder-<kimg>/, recon-<kimg>.png, state-<kimg>.pt, encoder-latest/ and latest.json."""
        if run_dir is None:
            return {}
        tag = S.kimg_tag(self.cur_nimg)
        meta = {"kimg": self.cur_nimg / 1000, "step": self.step, "training_config": self.config_json()}
        encoder = self.E.save_pretrained(run_dir / f"encoder-{tag}", metadata=meta)
        self._write_reconstructions(run_dir / f"recon-{tag}.png")
        state = S.save_state(S.state_path(run_dir, self.cur_nimg), self.state_dict())
        self.E.save_pretrained(run_dir / "encoder-latest", metadata=meta)
        write_text(run_dir / "latest.json", json.dumps(
            {"kimg": self.cur_nimg / 1000, "encoder": encoder.name, "state": state.name}, indent=2) + "\n")
        S.prune_states(run_dir, keep=2)
        return {"kimg": self.cur_nimg / 1000, "encoder": str(encoder), "state": str(state)}

    @torch.no_grad()
    def _write_reconstructions(self, path: Path, n: int = 8) -> None:
        """Row 1: n fixed real images; row 2: G(E(image))."""
        n = min(n, len(self.dataset))
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.cfg.seed))[:n]
        reals = images_to_float(torch.stack([self.dataset[int(i)] for i in order]), self.device)
        was_training = self.E.training
        self.E.eval()
        recon = self.G.synthesis(self.E(reals), self.E.space, force_fp32=True).clamp(-1, 1)
        self.E.train(was_training)
        save_grid(path, torch.cat([reals, recon]), ncols=n)


def _from_json(d: dict[str, Any]) -> dict[str, Any]:
    return {**d, "adam_betas": tuple(d["adam_betas"])} if "adam_betas" in d else d


def read_run_config(run_dir: str | os.PathLike[str]) -> EncoderTrainConfig:
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: is {str(run_dir)!r} a run folder of "
                                f"`opstylegan encoder train`?")
    try:
        d = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise S.StateError(f"{str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(d, dict) or "generator_fingerprint" not in d:
        raise S.StateError(f"{str(path)!r} is not the config of an encoder run (a `opstylegan train` run folder?)")
    return EncoderTrainConfig.from_dict(_from_json(d))


def _trim_stats(run_dir: Path, cur_nimg: int) -> None:
    """Drops stats lines written after the state we resume from (a run killed between snapshots)."""
    path = run_dir / STATS_NAME
    if path.is_file():
        keep = [line for line in path.read_text("utf-8").splitlines()
                if line.strip() and json.loads(line)["kimg"] <= cur_nimg / 1000 + 1e-9]
        write_text(path, "".join(line + "\n" for line in keep))


@dataclass
class EncoderTrainResult:
    run_dir: Path
    config: EncoderTrainConfig
    last_tick: dict[str, Any]
    resumed_from: Path | None
    encoder: Encoder


def train_encoder(cfg: EncoderTrainConfig | None = None, *, outdir: str | os.PathLike[str] | None = None,
                  resume: str | os.PathLike[str] | None = None, kimg: float | None = None,
                  device: torch.device | str = "cpu", lpips: nn.Module | None = None,
                  progress: ProgressFn | None = None, callback: CallbackFn | None = None) -> EncoderTrainResult:
    """Train a new encoder run (cfg + outdir) or continue one (resume = its run folder; kimg may extend it).

    A new run gets an auto-numbered folder ``outdir/NNNNN-<dataset>_encoder-<overparam|baseline>`` with the
    resolved config.json. ``callback("run_dir", ...)`` names the folder; on resume, ``callback("resume",
    ...)`` names the state and any unreadable newer state that was skipped.
    """
    from opstylegan.pretrained import resolve_model

    resumed_from, resume_info = None, None
    if resume is not None:
        run_dir = Path(resume)
        cfg = read_run_config(run_dir)
        if kimg is not None:
            cfg = cfg.replace(kimg=kimg)
        G = Generator.from_pretrained(cfg.model, device=device)
        trainer = EncoderTrainer(cfg, G, lpips=lpips)
        latest = S.find_latest_state(run_dir, map_location="cpu")
        trainer.load_state_dict(latest.state)
        resumed_from = latest.path
        _trim_stats(run_dir, trainer.cur_nimg)
        S.remove_stale_temporaries(run_dir)
        resume_info = {"state": str(latest.path), "cur_nimg": trainer.cur_nimg, "skipped": latest.skipped}
    else:
        if cfg is None or outdir is None:
            raise ValueError("train_encoder: give cfg and outdir for a new run, or resume=RUN_DIR")
        if not cfg.model or not cfg.data:
            raise ValueError("train_encoder: cfg.model (the generator) and cfg.data (the images) are both needed")
        if kimg is not None:
            cfg = cfg.replace(kimg=kimg)
        model_dir = resolve_model(cfg.model).resolve()
        cfg = cfg.replace(model=str(model_dir), data=str(Path(cfg.data).resolve()))
        G = Generator.from_pretrained(model_dir, device=device)
        trainer = EncoderTrainer(cfg, G, lpips=lpips)
        run_dir = next_run_dir(outdir, f"{Path(cfg.data).name}-encoder", G.overparam)
        run_dir.mkdir(parents=True, exist_ok=False)
    write_text(run_dir / CONFIG_NAME, json.dumps(trainer.config_json(), indent=2) + "\n")
    if callback is not None:
        callback("run_dir", {"run_dir": str(run_dir)})
        if resume_info is not None:
            callback("resume", resume_info)
    last = trainer.run(run_dir, progress=progress, callback=callback)
    return EncoderTrainResult(run_dir, trainer.cfg, last, resumed_from, trainer.E)
