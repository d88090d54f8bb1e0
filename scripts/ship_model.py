#!/usr/bin/env python
"""Copies a trained snapshot into the package as a shipped model, with the reference images that
tests/test_pretrained.py checks (so that a later change that silently alters the networks is caught).

    python scripts/ship_model.py RUN_DIR/network-000200.000 fmnist32-overparam --run RUN_DIR

Writes src/opstylegan/pretrained/NAME/{config.json, model.safetensors, reference.json}; the model card
(MODEL_CARD.md) is written by hand from the run's figures.

The shipped config.json records the run's training config with no path of the training machine in it: the
training data is named by its folder name and identified by the sha256 of its images.npy (from its dataset.json,
checked against the file), and an initialising model folder by its folder name. The dataset is looked up where
the run's config.json says it was; give --data if it has moved since.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from opstylegan.data.build import IMAGES_FILE, DatasetError, read_metadata
from opstylegan.io.atomic import sha256_file, write_text
from opstylegan.models.generator import Generator
from opstylegan.pretrained import SHIPPED

REFERENCE_SEEDS = [0, 1, 2, 3]
REFERENCE_PSI = 0.7
PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "src" / "opstylegan" / "pretrained"


def reference_images(G: Generator) -> torch.Tensor:
    """Images of the reference seeds (truncation 0.7), float32 [4, C, H, W]."""
    with torch.no_grad():
        return G(G.z_from_seeds(REFERENCE_SEEDS), truncation_psi=REFERENCE_PSI)


def dataset_identity(data: Path) -> dict[str, Any]:
    """Name, sha256 of images.npy (verified against the file) and shape of a dataset built by `opstylegan dataset`."""
    meta = read_metadata(data)
    recorded = (meta.get("sha256") or {}).get(IMAGES_FILE)
    actual = sha256_file(data / IMAGES_FILE)
    if recorded != actual:
        raise DatasetError(f"{data / IMAGES_FILE}: sha256 {actual} differs from {recorded} in its dataset.json; the "
                           f"dataset was changed after it was built")
    return {"name": data.name, "sha256": {IMAGES_FILE: actual}, "count": meta["count"],
            "resolution": meta["resolution"], "channels": meta["channels"]}


def portable_training_config(run_cfg: dict[str, Any], data: Path) -> dict[str, Any]:
    """The run's config with machine paths replaced: data -> the dataset's name (+ "dataset": name and sha256),
    init_from / init_d model folders -> their folder names (shipped names stay)."""
    cfg = {**run_cfg, "data": data.name, "dataset": dataset_identity(data)}
    for key in ("init_from", "init_d"):
        if cfg.get(key) is not None and cfg[key] not in SHIPPED:
            cfg[key] = Path(cfg[key]).name
    return cfg


def training_data(data: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The model card's view of the training set: its name, the sha256 of its images and the command that
    builds it (from its dataset.json: resolution, channels, fit, split; the source by its file or folder name
    only, since its full path is the training machine's)."""
    meta = read_metadata(data)
    cmd = ["opstylegan", "dataset", Path(str(meta.get("source", "SOURCE"))).name, data.name, "--resolution",
           str(meta["resolution"]), "--channels", str(meta["channels"])]
    if meta.get("fit"):
        cmd += ["--fit", str(meta["fit"])]
    if meta.get("split") not in (None, "train"):
        cmd += ["--split", str(meta["split"])]
    return {"name": identity["name"], "images_sha256": identity["sha256"][IMAGES_FILE], "built_with": " ".join(cmd)}


def ship(network: Path, name: str, run: Path, *, data: Path | None = None, dest_root: Path = PRETRAINED_DIR) -> Path:
    """Writes dest_root/NAME (config.json, model.safetensors, reference.json) from a snapshot folder of `run`."""
    G = Generator.from_pretrained(network)
    run_cfg = json.loads((run / "config.json").read_text())
    data = Path(data if data is not None else run_cfg["data"])
    training_config = portable_training_config(run_cfg, data)
    dest = dest_root / name
    meta = json.loads((network / "config.json").read_text())["metadata"]
    G.save_pretrained(dest, metadata={"shipped_as": name, "snapshot": network.name,
                                      "kimg": meta.get("kimg"), "training_config": training_config,
                                      "training_data": training_data(data, training_config["dataset"])})
    H = Generator.from_pretrained(dest)
    img = reference_images(H)
    write_text(dest / "reference.json", json.dumps({
        "seeds": REFERENCE_SEEDS, "truncation_psi": REFERENCE_PSI, "fingerprint": H.fingerprint(),
        "shape": list(img.shape), "images": [round(v, 6) for v in img.flatten().tolist()],
    }) + "\n")
    return dest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("network", type=Path, help="snapshot folder (network-XXXXXX.XXX)")
    p.add_argument("name", help="shipped name, e.g. fmnist32-overparam")
    p.add_argument("--run", type=Path, required=True, help="the training run folder (config.json, stats.jsonl)")
    p.add_argument("--data", type=Path, default=None,
                   help="the run's dataset folder, if it is no longer where the run's config.json says")
    p.add_argument("--dest-root", type=Path, default=PRETRAINED_DIR, help="where the NAME folder is written")
    args = p.parse_args(argv)
    try:
        dest = ship(args.network, args.name, args.run, data=args.data, dest_root=args.dest_root)
    except (DatasetError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"shipped {args.network} as {dest} (fingerprint {Generator.from_pretrained(dest).fingerprint()[:16]}...)")


if __name__ == "__main__":
    main()
