#!/usr/bin/env python
"""Copies a trained snapshot into the package as a shipped model, with the reference images that
tests/test_pretrained.py checks (so that a later change that silently alters the networks is caught).

    python scripts/ship_model.py RUN_DIR/network-000200.000 fmnist32-overparam --run RUN_DIR

Writes src/opstylegan/pretrained/NAME/{config.json, model.safetensors, reference.json}; the model card
(MODEL_CARD.md) is written by hand from the run's figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from opstylegan.io.atomic import write_text
from opstylegan.models.generator import Generator

REFERENCE_SEEDS = [0, 1, 2, 3]
REFERENCE_PSI = 0.7


def reference_images(G: Generator) -> torch.Tensor:
    """Images of the reference seeds (truncation 0.7), float32 [4, C, H, W]."""
    with torch.no_grad():
        return G(G.z_from_seeds(REFERENCE_SEEDS), truncation_psi=REFERENCE_PSI)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("network", type=Path, help="snapshot folder (network-XXXXXX.XXX)")
    p.add_argument("name", help="shipped name, e.g. fmnist32-overparam")
    p.add_argument("--run", type=Path, required=True, help="the training run folder (config.json, stats.jsonl)")
    args = p.parse_args()

    G = Generator.from_pretrained(args.network)
    run_cfg = json.loads((args.run / "config.json").read_text())
    dest = Path(__file__).resolve().parent.parent / "src" / "opstylegan" / "pretrained" / args.name
    meta = json.loads((args.network / "config.json").read_text())["metadata"]
    G.save_pretrained(dest, metadata={"shipped_as": args.name, "snapshot": args.network.name,
                                      "kimg": meta.get("kimg"), "training_config": run_cfg})
    H = Generator.from_pretrained(dest)
    img = reference_images(H)
    write_text(dest / "reference.json", json.dumps({
        "seeds": REFERENCE_SEEDS, "truncation_psi": REFERENCE_PSI, "fingerprint": H.fingerprint(),
        "shape": list(img.shape), "images": [round(v, 6) for v in img.flatten().tolist()],
    }) + "\n")
    print(f"shipped {args.network} as {dest} (fingerprint {H.fingerprint()[:16]}...)")


if __name__ == "__main__":
    main()
