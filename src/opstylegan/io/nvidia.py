"""NVIDIA StyleGAN2 network pickles -> opstylegan models, without running any code from the pickle.

The snapshots of NVlabs/stylegan2-ada-pytorch and of NVlabs/stylegan3's StyleGAN2 (`networks_stylegan2.py`)
are pickles of `dict(training_set_kwargs, G, D, G_ema, augment_pipe)`. Each network is a
`torch_utils.persistence` object: its pickle calls `torch_utils.persistence._reconstruct_persistent_obj(meta)`,
where `meta` holds the module's Python source (`module_src`), the class name and the object's state (its
`__dict__`: `_parameters`, `_buffers`, `_modules`, constructor arguments, attributes). NVIDIA's loader executes
that source. This reader never does:

- `_RestrictedUnpickler` resolves only the globals in `ALLOWED_GLOBALS`; any other global (os.system,
  builtins.eval, a class of the embedded source, ...) is refused with `NvidiaPickleError` naming it.
- `_reconstruct_persistent_obj` is replaced by `PersistentObject`, a plain record of the state; the module
  source is kept as text (its sha256 goes into the converted model's metadata) and never compiled.
- Storages are read with `torch.load(..., weights_only=True)`, tensors rebuilt with torch's own rebuilder.

The converters then copy the tensors into a `Generator` / `Discriminator` of the matching config, checking
every name and shape. One fact needs a change of weights: NVIDIA's up-sampling `conv0` layers are true
convolutions (`flip_weight=(up == 1)` is False there), while this project's transposed convolution correlates
with the kernel like every other layer, so those kernels are flipped spatially.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opstylegan.config import ConfigError, DiscriminatorConfig, GeneratorConfig
from opstylegan.io.atomic import sha256_file
from opstylegan.models.discriminator import Discriminator
from opstylegan.models.generator import Generator

WHICH = ("G_ema", "G", "D")
NOISE_MODES = ("const", "none")


class NvidiaPickleError(ValueError):
    """The file is not a readable NVIDIA StyleGAN2 network pickle, refers to a global that is not allowed, or
    holds a network this converter does not support; the message says which."""


@dataclass(frozen=True)
class PersistentObject:
    """A `torch_utils.persistence` object read as data: its class name and state, its source never run."""

    class_name: str
    state: dict[str, Any]
    source_sha256: str
    version: int

    def child(self, name: str) -> PersistentObject:
        mods = self.state.get("_modules") or {}
        obj = mods.get(name)
        if not isinstance(obj, PersistentObject):
            raise NvidiaPickleError(f"{self.class_name} has no sub-network {name!r} (it has {sorted(mods)})")
        return obj

    def children(self) -> dict[str, PersistentObject]:
        return {k: v for k, v in (self.state.get("_modules") or {}).items() if isinstance(v, PersistentObject)}

    def has_child(self, name: str) -> bool:
        return isinstance((self.state.get("_modules") or {}).get(name), PersistentObject)

    def tensor(self, name: str) -> torch.Tensor:
        """A parameter or (persistent) buffer, as a plain float32 CPU tensor."""
        for key in ("_parameters", "_buffers"):
            t = (self.state.get(key) or {}).get(name)
            if t is not None:
                if not isinstance(t, torch.Tensor):
                    raise NvidiaPickleError(f"{self.class_name}.{name} is a {type(t).__name__}, not a tensor")
                return t.detach().to("cpu", torch.float32)
        raise NvidiaPickleError(f"{self.class_name} has no parameter or buffer {name!r}")

    def has_tensor(self, name: str) -> bool:
        return any((self.state.get(k) or {}).get(name) is not None for k in ("_parameters", "_buffers"))

    def attr(self, name: str, default: Any = None) -> Any:
        """An attribute of the object, else a constructor keyword argument, else `default`."""
        if name in self.state:
            return _plain(self.state[name])
        kwargs = self.state.get("_init_kwargs") or {}
        return _plain(kwargs.get(name, default))

    def init_kwargs(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in (self.state.get("_init_kwargs") or {}).items()}


def _plain(v: Any) -> Any:
    """numpy scalars (as NVIDIA's pickles store some gains) -> Python numbers; dicts recursively."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


class EasyDict(dict):
    """Stands for `dnnlib.EasyDict` (a dict with attribute access); only its items are read."""


def _reconstruct_persistent(meta: Any) -> PersistentObject:
    """Replaces `torch_utils.persistence._reconstruct_persistent_obj`: records the state, runs nothing."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise NvidiaPickleError("a persistent object in the pickle has no valid description (expected a dict with "
                                "type='class', class_name, module_src, state)")
    name, src, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
    if not isinstance(name, str) or not isinstance(src, str) or not isinstance(state, dict):
        raise NvidiaPickleError(f"a persistent object in the pickle is malformed (class_name={name!r}, "
                                f"module_src of type {type(src).__name__}, state of type {type(state).__name__})")
    version = meta.get("version")
    return PersistentObject(name, dict(state), hashlib.sha256(src.encode("utf-8")).hexdigest(),
                            version if isinstance(version, int) else -1)


def _load_storage(data: Any) -> Any:
    """Replaces `torch.storage._load_from_bytes`: the bytes are a torch.save of one storage, read safely."""
    if not isinstance(data, (bytes, bytearray)):
        raise NvidiaPickleError(f"a storage in the pickle is a {type(data).__name__}, not bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation notices
        try:
            return torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure here means a corrupt or foreign storage
            raise NvidiaPickleError(f"a tensor storage in the pickle cannot be read safely: {e}") from None


def _no_hooks(hooks: Any) -> None:
    if hooks:
        raise NvidiaPickleError("a tensor in the pickle carries backward hooks; refusing (hooks are code)")


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, requires_grad: bool, hooks: Any,
                    metadata: Any = None) -> torch.Tensor:
    _no_hooks(hooks)
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise NvidiaPickleError(f"a tensor in the pickle is built from a {type(storage).__name__}, not a storage")
    return torch._utils._rebuild_tensor_v2(storage, offset, tuple(size), tuple(stride), False, OrderedDict())


def _rebuild_parameter(data: Any, requires_grad: bool, hooks: Any, state: Any = None) -> torch.Tensor:
    _no_hooks(hooks)
    if not isinstance(data, torch.Tensor):
        raise NvidiaPickleError(f"a parameter in the pickle wraps a {type(data).__name__}, not a tensor")
    return data  # the plain tensor: only its values are used


def _numpy_core() -> Any:
    core = getattr(np, "_core", None)  # numpy 2 name; numpy 1 only has np.core
    if core is None:
        core = np.core
    return core.multiarray


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or (data is not None and not isinstance(data, (bytes, bytearray))):
        raise NvidiaPickleError("a numpy scalar in the pickle is malformed")
    if dtype.hasobject:
        raise NvidiaPickleError("a numpy object scalar in the pickle is refused (it would unpickle arbitrary objects)")
    return _numpy_core().scalar(dtype, data)


def _numpy_dtype(*args: Any) -> np.dtype:
    if not args or not isinstance(args[0], str):
        raise NvidiaPickleError(f"a numpy dtype in the pickle is malformed: {args!r}")
    return np.dtype(args[0])


# (module, name) -> the callable the unpickler gets instead. Everything else is refused.
ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        fn = ALLOWED_GLOBALS.get((module, name))
        if fn is not None:
            return fn
        if module.startswith("dnnlib.tflib"):
            raise NvidiaPickleError(
                f"the pickle refers to {module}.{name}: it is a TensorFlow StyleGAN/StyleGAN2 pickle. Convert it "
                f"to a PyTorch pickle first with stylegan2-ada-pytorch's legacy.py, then convert that")
        raise NvidiaPickleError(
            f"the pickle refers to the global {module}.{name}, which is not allowed: only the tensor, numpy "
            f"and container globals of NVIDIA's network pickles are read, so that no code from the file runs")

    def persistent_load(self, pid: Any) -> Any:
        raise NvidiaPickleError("the pickle uses persistent ids (a torch.save zip archive or another format); "
                                "expected a network pickle of stylegan2-ada-pytorch or stylegan3")


def load_network_pickle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads an NVIDIA network pickle as data: {'G': PersistentObject, 'D': ..., 'G_ema': ..., ...}.

    No code from the file is executed. Raises NvidiaPickleError for a missing, truncated, non-pickle or
    foreign file, naming the problem.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"network pickle not found: {str(p)!r}")
    with open(p, "rb") as f:
        head = f.read(2)
        if head[:1] != b"\x80" or len(head) < 2 or head[1] < 2:
            what = "a zip archive (torch.save or a model folder's files?)" if head == b"PK" else "not a pickle"
            raise NvidiaPickleError(f"{str(p)!r} is {what}: an NVIDIA network pickle starts with the pickle "
                                    f"protocol marker 0x80 (protocol 2 or higher)")
        f.seek(0)
        try:
            data = _RestrictedUnpickler(f).load()
        except NvidiaPickleError as e:
            raise NvidiaPickleError(f"{str(p)!r}: {e}") from None
        except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                MemoryError, RecursionError, OverflowError, RuntimeError) as e:
            size = p.stat().st_size
            hint = "truncated (an incomplete download or copy?)" if (
                isinstance(e, EOFError) or "truncated" in str(e) or "exhausted" in str(e)) else "corrupt or not " \
                "a network pickle"
            raise NvidiaPickleError(f"{str(p)!r} ({size} bytes) cannot be read: the pickle is {hint}: "
                                    f"{type(e).__name__}: {e}") from None
    if isinstance(data, PersistentObject):
        data = {data.class_name: data}
    if not isinstance(data, dict):
        raise NvidiaPickleError(f"{str(p)!r} holds a {type(data).__name__}; expected NVIDIA's snapshot dict "
                                f"(G, D, G_ema, ...)")
    return data


# -- conversion ---------------------------------------------------------------------------------------------

def _check_filter(layer: PersistentObject, where: str) -> None:
    if layer.has_tensor("resample_filter"):
        f = layer.tensor("resample_filter")
        ref = torch.tensor([1.0, 3.0, 3.0, 1.0])
        ref = ref[:, None] * ref[None, :]
        if f.shape != (4, 4) or not torch.allclose(f, ref / ref.sum(), atol=1e-6):
            raise NvidiaPickleError(f"{where} uses a resampling filter other than [1, 3, 3, 1], which is not "
                                    f"supported")


def _check_unconditional(obj: PersistentObject, what: str) -> None:
    c_dim = obj.attr("c_dim", 0) or 0
    if c_dim:
        raise NvidiaPickleError(f"the {what} is conditional (c_dim={c_dim}, class labels): conditional networks are "
                                f"not supported; only unconditional StyleGAN2 networks can be converted")


def _number(v: Any, what: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise NvidiaPickleError(f"{what} is {v!r}; expected a number")
    return float(v)


def _copy_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Loads `tensors` (every key of module.state_dict(), right shapes) strictly into `module`."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise NvidiaPickleError(f"the {what} does not map onto this project's network: missing {missing[:5]}, "
                                f"unexpected {extra[:5]}")
    for k, t in tensors.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise NvidiaPickleError(f"the {what}'s tensor for {k} has shape {list(t.shape)} but the network built "
                                    f"from its config expects {list(expected[k].shape)}")
    module.load_state_dict({k: t.to(expected[k].dtype) for k, t in tensors.items()}, strict=True)


def generator_config(obj: PersistentObject, *, const_noise: bool = True) -> GeneratorConfig:
    """The GeneratorConfig of an NVIDIA StyleGAN2 generator (its constructor arguments and attributes)."""
    if obj.class_name != "Generator":
        raise NvidiaPickleError(f"expected a StyleGAN2 Generator, got a {obj.class_name!r}")
    _check_unconditional(obj, "generator")
    syn, mapping = obj.child("synthesis"), obj.child("mapping")
    if syn.class_name != "SynthesisNetwork" or not syn.has_child("b4"):
        raise NvidiaPickleError(f"the generator's synthesis network is a {syn.class_name!r} without StyleGAN2's "
                                f"b4 block: StyleGAN3 (-T / -R) networks are not supported, only StyleGAN2")
    _check_unconditional(mapping, "mapping network")
    fcs = sorted((k for k in mapping.children() if k.startswith("fc")), key=lambda k: int(k[2:]))
    if not fcs or fcs != [f"fc{i}" for i in range(len(fcs))]:
        raise NvidiaPickleError(f"the mapping network's layers are {sorted(mapping.children())}; expected fc0..fcN")
    lr_mult = _number(mapping.child("fc0").attr("bias_gain", 0.01), "the mapping's lr multiplier")
    kw = syn.init_kwargs()
    w_dim = int(obj.attr("w_dim"))
    use_noise = [layer.attr("use_noise", True) for block in syn.children().values()
                 for name, layer in block.children().items() if name in ("conv0", "conv1")]
    if const_noise and not all(use_noise):
        const_noise = False  # a network trained without noise inputs has none to reproduce
    try:
        return GeneratorConfig(
            img_resolution=int(obj.attr("img_resolution")), img_channels=int(obj.attr("img_channels")),
            z_dim=int(obj.attr("z_dim")), w_dim=w_dim, mapping_layers=len(fcs),
            mapping_lr_multiplier=lr_mult or 0.01, w_avg_beta=float(mapping.attr("w_avg_beta", 0.995)),
            channel_base=int(kw.get("channel_base", 32768)), channel_max=int(kw.get("channel_max", 512)),
            num_fp16_res=int(kw.get("num_fp16_res", 0)),
            conv_clamp=_number(kw.get("conv_clamp", syn.child("b4").attr("conv_clamp")), "conv_clamp"),
            const_noise=const_noise,
        )
    except (ConfigError, TypeError, ValueError) as e:
        raise NvidiaPickleError(f"the generator's configuration is not supported: {e}") from None


def convert_generator(obj: PersistentObject, *, noise: str = "const") -> Generator:
    """An NVIDIA StyleGAN2 generator (G or G_ema) -> an equivalent opstylegan Generator (baseline, eval mode).

    noise='const' (default): G(z) equals NVIDIA's G(z, None, noise_mode='const'); noise='none': equals
    noise_mode='none' (the noise buffers are left out).
    """
    if noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {list(NOISE_MODES)}, got {noise!r}")
    cfg = generator_config(obj, const_noise=noise == "const")
    syn, mapping = obj.child("synthesis"), obj.child("mapping")
    t: dict[str, torch.Tensor] = {}
    for i in range(cfg.mapping_layers):
        fc = mapping.child(f"fc{i}")
        if fc.attr("activation", "lrelu") != "lrelu":
            raise NvidiaPickleError(f"mapping.fc{i} uses activation {fc.attr('activation')!r}; only lrelu is "
                                    f"supported")
        t[f"_mapping.layers.{i}.weight"], t[f"_mapping.layers.{i}.bias"] = fc.tensor("weight"), fc.tensor("bias")
    t["_mapping.w_avg"] = mapping.tensor("w_avg")
    resolutions = [2**i for i in range(2, int(math.log2(cfg.img_resolution)) + 1)]
    for j, res in enumerate(resolutions):
        block = syn.child(f"b{res}")
        where = f"synthesis.b{res}"
        if block.attr("architecture", "skip") != "skip":
            raise NvidiaPickleError(f"{where} uses architecture {block.attr('architecture')!r}; only 'skip' (the "
                                    f"StyleGAN2 generator default) is supported")
        _check_filter(block, where)
        pre = f"_synthesis.blocks.{j}"
        if res == 4:
            t[f"{pre}.const"] = block.tensor("const")
        for name in ("conv0", "conv1") if res > 4 else ("conv1",):
            layer = block.child(name)
            _check_filter(layer, f"{where}.{name}")
            if layer.attr("activation", "lrelu") != "lrelu":
                raise NvidiaPickleError(f"{where}.{name} uses activation {layer.attr('activation')!r}; only lrelu "
                                        f"is supported")
            weight = layer.tensor("weight")
            # NVIDIA's up-sampling conv0 is a true convolution (flip_weight=False); ours correlates like the others.
            t[f"{pre}.{name}.weight"] = weight.flip([2, 3]) if name == "conv0" else weight
            t[f"{pre}.{name}.bias"] = layer.tensor("bias")
            t[f"{pre}.{name}.affine.weight"] = layer.child("affine").tensor("weight")
            t[f"{pre}.{name}.affine.bias"] = layer.child("affine").tensor("bias")
            if cfg.const_noise:
                t[f"{pre}.{name}.noise_const"] = layer.tensor("noise_const")
                t[f"{pre}.{name}.noise_strength"] = layer.tensor("noise_strength")
        torgb = block.child("torgb")
        t[f"{pre}.torgb.weight"], t[f"{pre}.torgb.bias"] = torgb.tensor("weight"), torgb.tensor("bias")
        t[f"{pre}.torgb.affine.weight"] = torgb.child("affine").tensor("weight")
        t[f"{pre}.torgb.affine.bias"] = torgb.child("affine").tensor("bias")
    G = Generator(cfg)
    _copy_into(G, t, "generator")
    return G.eval()


def discriminator_config(obj: PersistentObject) -> DiscriminatorConfig:
    """The DiscriminatorConfig of an NVIDIA StyleGAN2 (resnet) discriminator."""
    if obj.class_name != "Discriminator":
        raise NvidiaPickleError(f"expected a StyleGAN2 Discriminator, got a {obj.class_name!r}")
    _check_unconditional(obj, "discriminator")
    kw = obj.init_kwargs()
    if not obj.has_child("b4"):
        raise NvidiaPickleError("the discriminator has no b4 epilogue; only StyleGAN2 discriminators are supported")
    epi = obj.child("b4")
    if (epi.attr("cmap_dim", 0) or 0) != 0:
        raise NvidiaPickleError("the discriminator is conditional (cmap_dim > 0); conditional networks are not "
                                "supported")
    group, channels = 0, 0
    if epi.has_child("mbstd"):
        mb = epi.child("mbstd")
        group, channels = mb.attr("group_size"), mb.attr("num_channels", 1)
        if group is None:
            raise NvidiaPickleError("the discriminator's minibatch-stddev group is the whole batch "
                                    "(mbstd_group_size=None), which is not supported; expected a number")
    try:
        return DiscriminatorConfig(
            img_resolution=int(obj.attr("img_resolution")), img_channels=int(obj.attr("img_channels")),
            channel_base=int(kw.get("channel_base", 32768)), channel_max=int(kw.get("channel_max", 512)),
            num_fp16_res=int(kw.get("num_fp16_res", 0)),
            conv_clamp=_number(kw.get("conv_clamp", epi.attr("conv_clamp")), "conv_clamp"),
            mbstd_group_size=int(group) if channels else 4, mbstd_num_channels=int(channels),
        )
    except (ConfigError, TypeError, ValueError) as e:
        raise NvidiaPickleError(f"the discriminator's configuration is not supported: {e}") from None


def convert_discriminator(obj: PersistentObject) -> Discriminator:
    """An NVIDIA StyleGAN2 resnet discriminator -> an equivalent opstylegan Discriminator (eval mode)."""
    cfg = discriminator_config(obj)
    t: dict[str, torch.Tensor] = {}
    resolutions = [2**i for i in range(int(math.log2(cfg.img_resolution)), 2, -1)]

    def conv(dst: str, layer: PersistentObject, where: str, *, bias: bool = True) -> None:
        _check_filter(layer, where)
        t[f"{dst}.weight"] = layer.tensor("weight")
        if bias:
            t[f"{dst}.bias"] = layer.tensor("bias")

    for i, res in enumerate(resolutions):
        block = obj.child(f"b{res}")
        where = f"D.b{res}"
        if block.attr("architecture", "resnet") != "resnet":
            raise NvidiaPickleError(f"{where} uses architecture {block.attr('architecture')!r}; only 'resnet' (the "
                                    f"StyleGAN2 discriminator default) is supported")
        if i == 0:
            conv(f"blocks.{i}.fromrgb", block.child("fromrgb"), f"{where}.fromrgb")
        conv(f"blocks.{i}.conv0", block.child("conv0"), f"{where}.conv0")
        conv(f"blocks.{i}.conv1", block.child("conv1"), f"{where}.conv1")
        conv(f"blocks.{i}.skip", block.child("skip"), f"{where}.skip", bias=False)
    epi = obj.child("b4")
    conv("epilogue.conv", epi.child("conv"), "D.b4.conv")
    for name in ("fc", "out"):
        t[f"epilogue.{name}.weight"] = epi.child(name).tensor("weight")
        t[f"epilogue.{name}.bias"] = epi.child(name).tensor("bias")
    D = Discriminator(cfg)
    _copy_into(D, t, "discriminator")
    return D.eval()


def _network(data: dict[str, Any], which: str, path: str) -> PersistentObject:
    if which not in WHICH:
        raise ValueError(f"which must be one of {list(WHICH)}, got {which!r}")
    obj = data.get(which)
    if obj is None and which == "G_ema" and "Generator" in data:
        obj = data["Generator"]  # a pickle of a single generator
    if not isinstance(obj, PersistentObject):
        have = sorted(k for k, v in data.items() if isinstance(v, PersistentObject))
        raise NvidiaPickleError(f"{path!r} has no network {which!r}; it has {have}")
    return obj


def convert_pickle(src: str | os.PathLike[str], dest: str | os.PathLike[str], *, which: str = "G_ema",
                   noise: str = "const") -> Path:
    """Converts network `which` of an NVIDIA pickle into an opstylegan model folder at `dest`.

    A generator trained without noise inputs has no noise to keep: it converts as noise='none' whatever `noise`.

    Returns the folder (config.json + model.safetensors, loadable with Generator/Discriminator.from_pretrained).
    The folder's metadata records the source file's sha256, the network and the noise mode.
    """
    if noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {list(NOISE_MODES)}, got {noise!r}")
    data = load_network_pickle(src)
    obj = _network(data, which, str(src))
    net: Generator | Discriminator
    net = convert_discriminator(obj) if which == "D" else convert_generator(obj, noise=noise)
    meta = {"converted_from": {"file": Path(src).name, "sha256": sha256_file(src), "network": which,
                               "class": obj.class_name, "module_source_sha256": obj.source_sha256,
                               "noise_mode": "const" if isinstance(net, Generator) and net.cfg.const_noise else "none",
                               "conv0_weights": "flipped spatially (NVIDIA's up-sampling conv is a true convolution)"}}
    return net.save_pretrained(dest, metadata=meta)
