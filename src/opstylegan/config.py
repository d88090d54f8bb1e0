"""Typed network configurations with validation and presets.

Configs are plain dataclasses: `asdict()` goes into config.json beside the weights, and `from_dict()`
refuses unknown keys so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T", bound="_Config")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and what is expected."""


#: Largest width of any layer or latent (z_dim, w_dim, channel_max, num_rows): 64x StyleGAN2's widest.
MAX_DIM = 1 << 16
#: Largest mapping depth.
MAX_MAPPING_LAYERS = 64
#: Largest network: 2^31 parameters (8.6 GB in float32; StyleGAN2's 1024 px generator has about 30 million).
#: A config.json asking for more is a typo or not ours, and is refused before anything is allocated.
MAX_PARAMETERS = 1 << 31


def _check_size(name: str, num_parameters: int, sizes: str) -> None:
    if num_parameters > MAX_PARAMETERS:
        raise ConfigError(f"{name}: {sizes} give {num_parameters:.3g} parameters, more than the {MAX_PARAMETERS:.3g} "
                          f"allowed ({num_parameters * 4 / 1e9:.3g} GB in float32); check these sizes")


def _is_pow2(x: int) -> bool:
    return isinstance(x, int) and x > 0 and (x & (x - 1)) == 0


class _Config:
    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}: expected a JSON object / dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def replace(self: T, **changes: Any) -> T:
        return self.from_dict({**self.to_dict(), **changes})


def _check_common(name: str, res: int, channels: int, base: int, cmax: int, fp16: int, clamp: float | None) -> None:
    if not _is_pow2(res) or not 16 <= res <= 1024:
        raise ConfigError(f"{name}: img_resolution must be a power of two in [16, 1024], got {res!r}")
    if channels not in (1, 3):
        raise ConfigError(f"{name}: img_channels must be 1 or 3, got {channels!r}")
    if not isinstance(base, int) or base <= 0:
        raise ConfigError(f"{name}: channel_base must be a positive int, got {base!r}")
    if not isinstance(cmax, int) or not 0 < cmax <= MAX_DIM:
        raise ConfigError(f"{name}: channel_max must be an int in [1, {MAX_DIM}], got {cmax!r}")
    if base // res < 1:
        raise ConfigError(f"{name}: channel_base={base} gives 0 channels at {res}px; need channel_base >= {res}")
    if not isinstance(fp16, int) or fp16 < 0:
        raise ConfigError(f"{name}: num_fp16_res must be an int >= 0, got {fp16!r}")
    if clamp is not None and not clamp > 0:
        raise ConfigError(f"{name}: conv_clamp must be > 0 or null, got {clamp!r}")


def channels_at(res: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at a resolution, as stylegan2-ada: min(channel_base // res, channel_max)."""
    return min(channel_base // res, channel_max)


#: The paper's row sampling Z_i = (z^(i) + z) / sqrt(2): each row's own share of variance.
PAPER_ROW_SPREAD = 0.5


@dataclass(frozen=True)
class GeneratorConfig(_Config):
    """StyleGAN2 generator as modernised by the paper: skip synthesis, no noise inputs, 2 mapping layers.

    overparam: the latent is a matrix of `num_rows` correlated rows (Z_i = (z^(i) + z) / sqrt(2)) instead of a
        vector.
    num_rows: R; None means channel_max (the largest number of output channels of any layer).
    mapping_layers: depth of the mapping MLP (2 here and in the paper; NVIDIA's FFHQ networks have 8).
    const_noise: every modulated 3x3 convolution adds a fixed noise image times a learned strength after the
        convolution, before bias and activation (buffers `noise_const` [res, res], `noise_strength` []). Off in
        this project's own models; on in networks converted from NVIDIA pickles, where it reproduces their
        `noise_mode='const'`. Random per-sample noise is not supported.
    row_spread: overparam only, the rows' own share of variance a in Z_i = sqrt(1 - a) z + sqrt(a) z^(i) (every
        row a unit Gaussian, any two rows correlated 1 - a). 0.5 is the paper's sampling and the default; other
        values are for ablations (a -> 0: all rows equal, the baseline's latent). Written to config.json only
        when not 0.5, so the configs (and fingerprints) of models made before it existed are unchanged.
    """

    img_resolution: int = 256
    img_channels: int = 3
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 2
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float = 0.995
    channel_base: int = 16384
    channel_max: int = 512
    num_fp16_res: int = 4
    conv_clamp: float | None = 256.0
    overparam: bool = False
    num_rows: int | None = None
    const_noise: bool = False
    row_spread: float = PAPER_ROW_SPREAD

    def to_dict(self) -> dict[str, Any]:
        # const_noise and row_spread are written only when not at their defaults, so that the configs (and
        # fingerprints) of models without them are the same as before the options existed.
        d = super().to_dict()
        if not d["const_noise"]:
            del d["const_noise"]
        if d["row_spread"] == PAPER_ROW_SPREAD:
            del d["row_spread"]
        return d

    def __post_init__(self) -> None:
        _check_common("GeneratorConfig", self.img_resolution, self.img_channels, self.channel_base,
                      self.channel_max, self.num_fp16_res, self.conv_clamp)
        for k, most in (("z_dim", MAX_DIM), ("w_dim", MAX_DIM), ("mapping_layers", MAX_MAPPING_LAYERS)):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= most:
                raise ConfigError(f"GeneratorConfig: {k} must be an int in [1, {most}], got {v!r}")
        if not 0 < self.mapping_lr_multiplier:
            raise ConfigError(f"GeneratorConfig: mapping_lr_multiplier must be > 0, got {self.mapping_lr_multiplier!r}")
        if not 0 <= self.w_avg_beta < 1:
            raise ConfigError(f"GeneratorConfig: w_avg_beta must be in [0, 1), got {self.w_avg_beta!r}")
        for k in ("overparam", "const_noise"):
            if not isinstance(getattr(self, k), bool):
                raise ConfigError(f"GeneratorConfig: {k} must be true or false, got {getattr(self, k)!r}")
        a = self.row_spread
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a <= 1:
            raise ConfigError(f"GeneratorConfig: row_spread must be a number in (0, 1] (the rows' own share of "
                              f"variance; 0.5 is the paper's), got {a!r}")
        if a != PAPER_ROW_SPREAD and not self.overparam:
            raise ConfigError("GeneratorConfig: row_spread is only meaningful with overparam=true")
        if self.num_rows is not None:
            if not self.overparam:
                raise ConfigError("GeneratorConfig: num_rows is only meaningful with overparam=true")
            need = self.max_out_channels
            if not isinstance(self.num_rows, int) or self.num_rows < need:
                raise ConfigError(
                    f"GeneratorConfig: num_rows={self.num_rows!r} is smaller than the largest layer's output "
                    f"channels ({need}); every output channel needs its own latent row, so use num_rows >= {need}"
                )
            if self.num_rows > MAX_DIM:
                raise ConfigError(f"GeneratorConfig: num_rows must be at most {MAX_DIM}, got {self.num_rows}")
        _check_size("GeneratorConfig", self.num_parameters(),
                    f"z_dim={self.z_dim}, w_dim={self.w_dim}, mapping_layers={self.mapping_layers}, channel_base="
                    f"{self.channel_base}, channel_max={self.channel_max} at {self.img_resolution} px")

    def num_parameters(self) -> int:
        """The number of parameters of a Generator with this config (computed, nothing is allocated)."""
        w, c_img = self.w_dim, self.img_channels
        n = self.z_dim * w + w + (self.mapping_layers - 1) * (w * w + w)  # mapping: fully connected layers
        noise = 1 if self.const_noise else 0  # noise_strength of each 3x3 convolution

        def conv(i: int, o: int) -> int:  # modulated 3x3: affine w -> i (+ bias), weight, bias
            return w * i + i + o * i * 9 + o + noise

        c_in = 0
        for res in (2**i for i in range(2, self.img_resolution.bit_length())):
            c = channels_at(res, self.channel_base, self.channel_max)
            n += c * 16 if c_in == 0 else conv(c_in, c)  # the 4x4 constant, or the upsampling conv
            n += conv(c, c) + (w * c + c + c_img * c + c_img)  # conv, ToRGB
            c_in = c
        return n

    @property
    def max_out_channels(self) -> int:
        """Largest N_O over all synthesis layers (the 4x4 .. img_resolution convolutions)."""
        res = [2**i for i in range(2, self.img_resolution.bit_length())]
        return max(channels_at(r, self.channel_base, self.channel_max) for r in res)

    @property
    def rows(self) -> int:
        """R, the number of latent rows (1 for the baseline)."""
        if not self.overparam:
            return 1
        return self.num_rows if self.num_rows is not None else max(self.channel_max, self.max_out_channels)


@dataclass(frozen=True)
class DiscriminatorConfig(_Config):
    """StyleGAN2 resnet discriminator with minibatch standard deviation."""

    img_resolution: int = 256
    img_channels: int = 3
    channel_base: int = 16384
    channel_max: int = 512
    num_fp16_res: int = 4
    conv_clamp: float | None = 256.0
    mbstd_group_size: int = 4
    mbstd_num_channels: int = 1

    def __post_init__(self) -> None:
        _check_common("DiscriminatorConfig", self.img_resolution, self.img_channels, self.channel_base,
                      self.channel_max, self.num_fp16_res, self.conv_clamp)
        if not isinstance(self.mbstd_group_size, int) or self.mbstd_group_size < 1:
            raise ConfigError(
                f"DiscriminatorConfig: mbstd_group_size must be an int >= 1, got {self.mbstd_group_size!r}")
        if not isinstance(self.mbstd_num_channels, int) or not 0 <= self.mbstd_num_channels <= MAX_DIM:
            raise ConfigError(f"DiscriminatorConfig: mbstd_num_channels must be an int in [0, {MAX_DIM}], got "
                              f"{self.mbstd_num_channels!r}")
        _check_size("DiscriminatorConfig", self.num_parameters(),
                    f"channel_base={self.channel_base}, channel_max={self.channel_max} at {self.img_resolution} px")

    def num_parameters(self) -> int:
        """The number of parameters of a Discriminator with this config (computed, nothing is allocated)."""
        ch = lambda r: channels_at(r, self.channel_base, self.channel_max)  # noqa: E731
        c = ch(self.img_resolution)
        n = self.img_channels * c + c  # FromRGB
        for res in (2**i for i in range(self.img_resolution.bit_length() - 1, 2, -1)):  # img_resolution .. 8
            t, o = ch(res), ch(res // 2)
            n += t * t * 9 + t + o * t * 9 + o + o * t  # conv, downsampling conv, skip (no bias)
        c = ch(4)
        return n + (c + self.mbstd_num_channels) * c * 9 + c + c * 16 * c + c + c + 1  # epilogue: conv, fc, out


def auto_channel_base(res: int) -> int:
    """stylegan2-ada 'auto': fmaps 0.5 below 512 px (16384), 1 from 512 px (32768)."""
    return 32768 if res >= 512 else 16384


@dataclass(frozen=True)
class Preset:
    generator: GeneratorConfig
    discriminator: DiscriminatorConfig
    description: str = field(default="")


def preset(name: str, *, img_resolution: int | None = None, img_channels: int | None = None,
           overparam: bool = False) -> Preset:
    """Named network presets.

    'auto'  : the stylegan2-ada auto configuration at the given resolution (the paper's setting at 256 px).
    'small' : channel_base 4096, channel_max 256: a single small GPU, or a patient CPU.
    'tiny'  : channel_base 512, channel_max 32, z/w 64: CPU smoke runs and tests (seconds).
    """
    res = img_resolution or {"auto": 256, "small": 64, "tiny": 32}.get(name, 0)
    ch = img_channels if img_channels is not None else 3
    if name == "auto":
        g = dict(channel_base=auto_channel_base(res), channel_max=512)
        d = dict(g)
    elif name == "small":
        g = dict(channel_base=4096, channel_max=256, z_dim=256, w_dim=256)
        d = dict(channel_base=4096, channel_max=256)
    elif name == "tiny":
        g = dict(channel_base=512, channel_max=32, z_dim=64, w_dim=64, num_fp16_res=0)
        d = dict(channel_base=512, channel_max=32, num_fp16_res=0)
    else:
        raise ConfigError(f"unknown preset {name!r}; choose one of 'auto', 'small', 'tiny'")
    gen = GeneratorConfig(img_resolution=res, img_channels=ch, overparam=overparam, **g)  # type: ignore[arg-type]
    disc = DiscriminatorConfig(img_resolution=res, img_channels=ch, **d)  # type: ignore[arg-type]
    return Preset(gen, disc, description=name)


PRESET_NAMES = ("auto", "small", "tiny")
