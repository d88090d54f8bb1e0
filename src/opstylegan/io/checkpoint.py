"""Self-describing model checkpoints: `model.safetensors` (weights) + `config.json` (class, config, hash).

Loading never unpickles: safetensors holds raw tensors only, the JSON is validated key by key, the weights'
sha256 recorded in the JSON is checked (so a truncated or swapped file is caught), and the state dict is
loaded strictly.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from opstylegan.io.atomic import atomic_dir

FORMAT = "opstylegan-model"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
M = TypeVar("M", bound="PretrainedMixin")


class CheckpointError(ValueError):
    """A model file or folder is missing, corrupt, of another kind, or does not fit the model."""


def _looks_like_pickle(path: Path) -> bool:
    if path.suffix.lower() in (".pkl", ".pickle", ".pt", ".pth", ".ckpt"):
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    return head[:1] == b"\x80" or head[:2] == b"PK"  # pickle protocol 2+, or a torch.save zip


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """Accepts the checkpoint folder, or its config.json / model.safetensors. Refuses pickles by name."""
    p = Path(path)
    if not p.exists():
        from opstylegan.pretrained import SHIPPED

        raise FileNotFoundError(
            f"model not found: {str(p)!r} (expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME}, or the name of "
            f"a shipped model: {', '.join(SHIPPED)})")
    if p.is_file():
        if p.name in (CONFIG_NAME, WEIGHTS_NAME):
            return p.parent
        if _looks_like_pickle(p):
            raise CheckpointError(
                f"{str(p)!r} is a pickle / torch.save file. opstylegan never unpickles model files (loading a pickle "
                f"runs arbitrary code). Give the folder written by save_pretrained / `opstylegan train` instead "
                f"({CONFIG_NAME} + {WEIGHTS_NAME})."
            )
        raise CheckpointError(f"{str(p)!r} is not an opstylegan model; expected a folder with {CONFIG_NAME} "
                              f"and {WEIGHTS_NAME}")
    return p


def read_model_json(model_dir: Path) -> dict[str, Any]:
    cfg_path = model_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{str(model_dir)!r} has no {CONFIG_NAME}; is it an opstylegan model folder?")
    try:
        meta = json.loads(cfg_path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{str(cfg_path)!r} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(cfg_path)!r} is not an opstylegan model config (format {FORMAT!r} missing)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{str(cfg_path)!r} has format_version {meta.get('format_version')!r}; this opstylegan "
                              f"reads version {FORMAT_VERSION}")
    for key in ("class", "config", "weights_sha256"):
        if key not in meta:
            raise CheckpointError(f"{str(cfg_path)!r} lacks the key {key!r}")
    return meta


def safetensors_metadata(blob: bytes) -> dict[str, str]:
    """The string metadata of a safetensors file's bytes (its layout: u64 little-endian header length, then a
    JSON header holding "__metadata__"). Raises ValueError / UnicodeDecodeError on a malformed header."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    return dict(header.get("__metadata__") or {})


def state_fingerprint(module: torch.nn.Module, config: dict[str, Any]) -> str:
    """sha256 of the config and the float32 weights: identifies a model whatever dtype it was stored in."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class PretrainedMixin:
    """save_pretrained / from_pretrained for nn.Modules holding a dataclass config as `self.cfg`."""

    config_class: ClassVar[type]
    cfg: Any

    def save_pretrained(self, path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32,
                        metadata: dict[str, Any] | None = None) -> Path:
        """Writes `path/` = model.safetensors + config.json atomically (the old folder stays until it is done)."""
        module: torch.nn.Module = self  # type: ignore[assignment]
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"save_pretrained: dtype must be float32, float16 or bfloat16, got {dtype}")
        state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
                 for k, v in module.state_dict().items()}
        blob = st_save(state, metadata={"format": FORMAT})
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "class": type(self).__name__,
            "config": self.cfg.to_dict(),
            "dtype": str(dtype).removeprefix("torch."),
            "weights_sha256": hashlib.sha256(blob).hexdigest(),
            "fingerprint": state_fingerprint(module, self.cfg.to_dict()),
            "metadata": metadata or {},
        }
        with atomic_dir(path) as tmp:
            (tmp / WEIGHTS_NAME).write_bytes(blob)
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", "utf-8")
        return Path(path)

    @classmethod
    def from_pretrained(cls: type[M], path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> M:
        """Loads a folder written by save_pretrained: JSON validated, sha256 checked, weights loaded strictly.

        ``path`` is a model folder (or its config.json / model.safetensors), or the name of a model shipped with
        opstylegan (``opstylegan.pretrained.SHIPPED``, e.g. ``"fmnist32-overparam"``), as every command's
        ``--model`` accepts. A string equal to a shipped name means the shipped model; a local folder of the
        same name is loaded with ``"./NAME"`` or a ``pathlib.Path``.
        """
        from opstylegan.pretrained import resolve_model

        model_dir = resolve_model_dir(resolve_model(path) if isinstance(path, str) else path)
        meta = read_model_json(model_dir)
        if meta["class"] != cls.__name__:
            raise CheckpointError(f"{str(model_dir)!r} holds a {meta['class']}, not a {cls.__name__}")
        cfg = cls.config_class.from_dict(meta["config"])  # raises ConfigError on unknown keys / bad values
        weights = model_dir / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{str(model_dir)!r} has no {WEIGHTS_NAME}")
        blob = weights.read_bytes()
        if hashlib.sha256(blob).hexdigest() != meta["weights_sha256"]:
            raise CheckpointError(f"{str(weights)!r} does not match the sha256 recorded in {CONFIG_NAME}: the file is "
                                  f"truncated, corrupt or from another model")
        try:
            state = st_load(blob)
        except (SafetensorError, ValueError) as e:
            raise CheckpointError(f"{str(weights)!r} is not a readable safetensors file: {e}") from None
        model = cls(cfg)  # type: ignore[call-arg]
        module: torch.nn.Module = model  # type: ignore[assignment]
        expected = module.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        bad_shape = [f"{k}: file {list(state[k].shape)} vs model {list(expected[k].shape)}"
                     for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
        if missing or unexpected or bad_shape:
            raise CheckpointError(f"{str(weights)!r} does not fit a {cls.__name__} with its config: missing "
                                  f"{missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {bad_shape[:5]}")
        module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
        model.source = str(model_dir)  # type: ignore[attr-defined]
        return module.to(device).eval()  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """Identifies these exact weights + config (stored in latent files to refuse foreign latents)."""
        return state_fingerprint(self, self.cfg.to_dict())  # type: ignore[arg-type]
