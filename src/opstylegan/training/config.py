"""TrainConfig: every knob of a training run, validated, with the stylegan2-ada "auto" defaults.

Fields left as None are filled by `resolve()` from the dataset and the world size (batch, gamma, lr,
ema_kimg, network configs); the resolved config is what a run folder's config.json holds, so a run can
be repeated or resumed from it alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from opstylegan.config import PRESET_NAMES, ConfigError, DiscriminatorConfig, GeneratorConfig, _Config, preset

AUG_MODES = ("ada", "noaug")
PL_ROWS = ("sum", "mean")  # training.loss.path_lengths: how the rows of a latent matrix enter the length


def auto_batch(img_resolution: int, gpus: int = 1) -> int:
    """stylegan2-ada 'auto' batch: max(min(gpus * min(4096 // res, 32), 64), gpus)."""
    return max(min(gpus * min(4096 // img_resolution, 32), 64), gpus)


def auto_gamma(img_resolution: int, batch: int) -> float:
    """stylegan2-ada 'auto' R1 weight: 0.0002 * res^2 / batch."""
    return 0.0002 * img_resolution**2 / batch


def auto_lr(img_resolution: int) -> float:
    """stylegan2-ada 'auto' learning rate: 0.002 at 1024 px, 0.0025 below."""
    return 0.002 if img_resolution >= 1024 else 0.0025


@dataclass(frozen=True)
class TrainConfig(_Config):
    """A training run. None means "derive it" (see `resolve`); after resolve() nothing is None but
    `resume_from`-like runtime choices, which are not part of the config.

    pl_rows: how the path-length regularizer reduces the squared gradient over the rows of a latent matrix
    ("sum", the default, or "mean", the formula of runs made before it existed; see
    `training.loss.path_lengths`). No effect on baselines (one row).
    row_spread: overparam only, each latent row's own share of variance (`GeneratorConfig.row_spread`; 0.5,
    the paper's, is the default); other values are an ablation of the rows' correlation (1 - row_spread).

    kimg: total length in thousands of real images shown to D. tick_kimg: one stats line (and progress
    report) per this many kimg. snap: network + training-state snapshot (and fakes grid) every this many
    ticks, and always at the end.

    init_from: start from pretrained weights instead of a random init (stylegan2-ada's `--resume=PKL`): a model
    folder (a generator: G and G_ema both start from it, w_avg included; e.g. one converted from an NVIDIA
    pickle), a shipped model's name, or a run folder of `opstylegan train` (G, G_ema and D from its newest
    training state). The network configs then come from it (`preset` is not used). init_d: a discriminator
    model folder to start D from (else D is initialised randomly, unless init_from is a run folder).
    upcycle_kimg: with overparam and a baseline init_from, the latent rows are sampled as
    Z_i = sqrt(1 - a) z + sqrt(a) z^(i) with a ramped linearly from 0 (all rows equal: the overparameterized
    G then makes exactly the baseline's images) to the paper's 0.5 over this many kimg; None resolves to a
    quarter of `kimg` for such runs and 0 otherwise. The ramp depends only on the images seen, so a resumed
    run continues it exactly. d_warmup_kimg: for the first this many kimg only D is trained (G, G_ema and the
    rows stay as they start), so that a freshly initialised D learns to judge a pretrained G before G follows
    its gradients; the upcycling ramp starts after it.
    """

    data: str = ""
    preset: str = "auto"
    overparam: bool = False
    kimg: float = 25000.0
    batch: int | None = None
    gamma: float | None = None
    lr: float | None = None
    adam_betas: tuple[float, float] = (0.0, 0.99)
    adam_eps: float = 1e-8
    r1_interval: int = 16
    pl_weight: float = 2.0
    pl_interval: int = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    pl_rows: str = "sum"
    row_spread: float = 0.5
    style_mixing_prob: float = 0.9
    ema_kimg: float | None = None
    ema_rampup: float | None = 0.05
    aug: str = "ada"
    aug_pipe: str = "bgc"
    ada_target: float = 0.6
    ada_interval: int = 4
    ada_kimg: float = 500.0
    mirror: bool = False
    fp32: bool = False
    tick_kimg: float = 4.0
    snap: int = 50
    grid_size: int = 32
    seed: int = 0
    workers: int = 2
    fid_num: int = 0
    fid_real_num: int = 50000
    snapshot_pr: bool = False
    init_from: str | None = None
    init_d: str | None = None
    upcycle_kimg: float | None = None
    d_warmup_kimg: float = 0.0
    generator: dict[str, Any] | None = None
    discriminator: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.adam_betas, list):  # JSON round trip
            object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        if self.preset not in PRESET_NAMES:
            raise ConfigError(f"TrainConfig: preset must be one of {list(PRESET_NAMES)}, got {self.preset!r}")
        if self.pl_rows not in PL_ROWS:
            raise ConfigError(f"TrainConfig: pl_rows must be one of {list(PL_ROWS)} ('sum': each layer's R x C "
                              f"matrix is its latent; 'mean': the pre-0.2 formula, ~sqrt(R) too small), "
                              f"got {self.pl_rows!r}")
        a = self.row_spread
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a <= 1:
            raise ConfigError(f"TrainConfig: row_spread must be a number in (0, 1] (0.5 is the paper's), got {a!r}")
        if a != 0.5 and not self.overparam:
            raise ConfigError("TrainConfig: row_spread is only meaningful for the overparameterized model "
                              "(a baseline has one latent row)")
        if a != 0.5 and self.init_from is not None:
            raise ConfigError("TrainConfig: row_spread cannot be combined with init_from (the rows of an "
                              "upcycled or continued model follow that model's sampling)")
        if self.aug not in AUG_MODES:
            raise ConfigError(f"TrainConfig: aug must be one of {list(AUG_MODES)}, got {self.aug!r}")
        if self.snapshot_pr and self.fid_num < 4:
            raise ConfigError(f"TrainConfig: snapshot_pr (precision/recall at snapshots) needs fid_num >= 4 "
                              f"generated images per snapshot, got fid_num={self.fid_num}")
        for k in ("overparam", "mirror", "fp32", "snapshot_pr"):
            if not isinstance(getattr(self, k), bool):
                raise ConfigError(f"TrainConfig: {k} must be true or false, got {getattr(self, k)!r}")
        _positive(self, "kimg", "tick_kimg", "ada_kimg", "adam_eps")
        _positive(self, "batch", "lr", "ema_kimg", optional=True)
        if self.gamma is not None and (isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float))
                                       or not math.isfinite(self.gamma) or self.gamma < 0):
            raise ConfigError(f"TrainConfig: gamma must be a number >= 0 (0 disables R1) or null, got {self.gamma!r}")
        for k in ("r1_interval", "pl_interval", "pl_batch_shrink", "ada_interval", "snap", "grid_size"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"TrainConfig: {k} must be an int >= 1, got {v!r}")
        for k in ("seed", "workers", "fid_num", "fid_real_num"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"TrainConfig: {k} must be an int >= 0, got {v!r}")
        for k in ("pl_weight",):
            if not isinstance(getattr(self, k), (int, float)) or getattr(self, k) < 0:
                raise ConfigError(f"TrainConfig: {k} must be a number >= 0, got {getattr(self, k)!r}")
        for k in ("pl_decay", "style_mixing_prob", "ada_target"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ConfigError(f"TrainConfig: {k} must be in [0, 1], got {v!r}")
        if self.ema_rampup is not None and not (isinstance(self.ema_rampup, (int, float)) and self.ema_rampup > 0):
            raise ConfigError(f"TrainConfig: ema_rampup must be > 0 or null, got {self.ema_rampup!r}")
        b1, b2 = self.adam_betas if len(self.adam_betas) == 2 else (None, None)
        if b1 is None or not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ConfigError(f"TrainConfig: adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        if self.fid_num == 1 or (self.fid_num and self.fid_real_num < 2):
            raise ConfigError(f"TrainConfig: FID needs at least 2 generated and 2 real images, got fid_num="
                              f"{self.fid_num}, fid_real_num={self.fid_real_num}")
        if self.batch is not None and self.batch < 2:
            raise ConfigError(f"TrainConfig: batch must be >= 2 (path-length batch shrink), got {self.batch!r}")
        for k in ("init_from", "init_d"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, str) or not v):
                raise ConfigError(f"TrainConfig: {k} must be a model folder (a non-empty string) or null, got {v!r}")
        if self.init_d is not None and self.init_from is None:
            raise ConfigError("TrainConfig: init_d (a pretrained discriminator) needs init_from (a pretrained "
                              "generator)")
        w = self.d_warmup_kimg
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"TrainConfig: d_warmup_kimg must be a number >= 0, got {w!r}")
        if w and self.init_from is None:
            raise ConfigError("TrainConfig: d_warmup_kimg (training only D first) needs init_from (a pretrained G)")
        if w >= self.kimg:
            raise ConfigError(f"TrainConfig: d_warmup_kimg={w:g} leaves no training of G within kimg={self.kimg:g}")
        if self.upcycle_kimg is not None:
            u = self.upcycle_kimg
            if isinstance(u, bool) or not isinstance(u, (int, float)) or not math.isfinite(u) or u < 0:
                raise ConfigError(f"TrainConfig: upcycle_kimg must be a number >= 0 or null, got {u!r}")
            if u > 0 and not (self.overparam and self.init_from):
                raise ConfigError("TrainConfig: upcycle_kimg (the ramp of the latent rows' correlation) needs "
                                  "overparam=true and init_from (a pretrained baseline)")

    @property
    def is_resolved(self) -> bool:
        return None not in (self.batch, self.gamma, self.lr, self.ema_kimg, self.generator, self.discriminator)

    def resolve(self, *, img_resolution: int, img_channels: int, world_size: int = 1) -> TrainConfig:
        """Fill every None from the dataset's shape and the number of processes (stylegan2-ada 'auto')."""
        if not isinstance(world_size, int) or world_size < 1:
            raise ConfigError(f"TrainConfig.resolve: world_size must be an int >= 1, got {world_size!r}")
        batch = self.batch if self.batch is not None else auto_batch(img_resolution, world_size)
        if batch % world_size:
            raise ConfigError(f"TrainConfig: batch={batch} is not divisible by the number of processes "
                              f"({world_size}); use a multiple of {world_size}")
        batch_gpu = batch // world_size
        upcycling = False
        if self.generator is None and self.init_from is not None:
            from opstylegan.training.upcycle import init_configs

            gen, disc, from_baseline = init_configs(self, img_resolution=img_resolution, img_channels=img_channels,
                                                    batch_gpu=batch_gpu)
            upcycling = self.overparam and from_baseline
        elif self.generator is None:
            p = preset(self.preset, img_resolution=img_resolution, img_channels=img_channels, overparam=self.overparam)
            g = p.generator.replace(num_fp16_res=0) if self.fp32 else p.generator
            d = p.discriminator.replace(num_fp16_res=0) if self.fp32 else p.discriminator
            d = d.replace(mbstd_group_size=min(batch_gpu, 4))
            if self.row_spread != 0.5:
                g = g.replace(row_spread=self.row_spread)
            gen, disc = g.to_dict(), d.to_dict()
        else:
            gen = GeneratorConfig.from_dict(self.generator).to_dict()
            disc = DiscriminatorConfig.from_dict(self.discriminator or {}).to_dict()
        for name, c in (("generator", gen), ("discriminator", disc)):
            if (c["img_resolution"], c["img_channels"]) != (img_resolution, img_channels):
                raise ConfigError(f"TrainConfig: the {name} is for {c['img_channels']}x{c['img_resolution']}px "
                                  f"images but the dataset has {img_channels}x{img_resolution}px")
        if gen["overparam"] != self.overparam:
            raise ConfigError(f"TrainConfig: overparam={self.overparam} but the generator config says "
                              f"overparam={gen['overparam']}")
        return self.replace(
            batch=batch,
            gamma=self.gamma if self.gamma is not None else auto_gamma(img_resolution, batch),
            lr=self.lr if self.lr is not None else auto_lr(img_resolution),
            ema_kimg=self.ema_kimg if self.ema_kimg is not None else batch * 10 / 32,
            upcycle_kimg=self.upcycle_kimg if self.upcycle_kimg is not None else (self.kimg / 4 if upcycling else 0.0),
            generator=gen,
            discriminator=disc,
        )

    @property
    def total_nimg(self) -> int:
        return int(math.ceil(self.kimg * 1000))

    def to_json_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d


def _positive(cfg: TrainConfig, *keys: str, optional: bool = False) -> None:
    for k in keys:
        v = getattr(cfg, k)
        if v is None and optional:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > 0:
            raise ConfigError(f"TrainConfig: {k} must be a number > 0{' or null' if optional else ''}, got {v!r}")
