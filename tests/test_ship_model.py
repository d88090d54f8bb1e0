"""scripts/ship_model.py: a shipped model's config.json names its training data and its sha256, never a path."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny

from opstylegan.data import build_dataset, write_idx
from opstylegan.data.build import DatasetError
from opstylegan.io.atomic import sha256_file
from opstylegan.models.generator import Generator

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ship_model.py"


@pytest.fixture(scope="module")
def ship_model():
    spec = importlib.util.spec_from_file_location("ship_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    """A run folder as `opstylegan train` leaves it: config.json with the absolute data path, one snapshot."""
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", (rng.random((6, 32, 32)) * 255).astype(np.uint8))
    data = tmp_path / "machine" / "fmnist32"
    build_dataset(tmp_path / "train-images-idx3-ubyte", data, resolution=32, channels=1)
    run = tmp_path / "machine" / "runs" / "00000-fmnist32-baseline"
    Generator(tiny()).save_pretrained(run / "network-000000.008", metadata={"kimg": 0.008})
    (run / "config.json").write_text(json.dumps({"data": str(data), "preset": "tiny", "kimg": 0.008,
                                                 "init_from": str(tmp_path / "machine" / "models" / "start"),
                                                 "init_d": None}))
    return run


def test_shipped_config_has_no_machine_path(ship_model, run: Path, tmp_path: Path) -> None:
    dest = ship_model.ship(run / "network-000000.008", "tiny-test", run, dest_root=tmp_path / "pretrained")
    text = (dest / "config.json").read_text()
    assert str(tmp_path) not in text and "/machine/" not in text
    tc = json.loads(text)["metadata"]["training_config"]
    data = tmp_path / "machine" / "fmnist32"
    assert tc["data"] == "fmnist32" and tc["init_from"] == "start"
    assert tc["dataset"] == {"name": "fmnist32", "sha256": {"images.npy": sha256_file(data / "images.npy")},
                             "count": 6, "resolution": 32, "channels": 1}
    td = json.loads((dest / "config.json").read_text())["metadata"]["training_data"]
    assert td["name"] == "fmnist32" and td["images_sha256"] == sha256_file(data / "images.npy")
    assert td["built_with"] == "opstylegan dataset train-images-idx3-ubyte fmnist32 --resolution 32 --channels 1 --fit " \
        + json.loads((data / "dataset.json").read_text())["fit"]
    assert Generator.from_pretrained(dest).fingerprint() == Generator.from_pretrained(
        run / "network-000000.008").fingerprint()
    assert json.loads((dest / "reference.json").read_text())["seeds"] == [0, 1, 2, 3]


def test_moved_or_changed_dataset(ship_model, run: Path, tmp_path: Path) -> None:
    data = tmp_path / "machine" / "fmnist32"
    moved = tmp_path / "elsewhere" / "fmnist32"
    shutil.move(data, moved)
    with pytest.raises(SystemExit, match="not a dataset directory"):
        ship_model.main([str(run / "network-000000.008"), "x", "--run", str(run), "--dest-root", str(tmp_path / "p")])
    ship_model.main([str(run / "network-000000.008"), "x", "--run", str(run), "--data", str(moved),
                     "--dest-root", str(tmp_path / "p")])
    assert json.loads((tmp_path / "p" / "x" / "config.json").read_text())["metadata"]["training_config"][
        "dataset"]["name"] == "fmnist32"
    images = np.load(moved / "images.npy")
    images[0, 0, 0, 0] ^= 1
    np.save(moved / "images.npy", images)
    with pytest.raises(DatasetError, match="the dataset was changed after it was built"):
        ship_model.ship(run / "network-000000.008", "y", run, data=moved, dest_root=tmp_path / "p")
