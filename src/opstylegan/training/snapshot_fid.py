"""FID of G_ema at training snapshots, and the `network-best/` model it selects (as the paper keeps the best).

Real-image statistics are computed once per dataset content (cached by opstylegan.metrics) over
`min(len(dataset), fid_real_num)` images; every snapshot then generates `fid_num` images (seeds 0..N-1,
no truncation) through the same Inception network. Rank 0 only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from opstylegan.data.dataset import ImageDataset, dataset_batches
from opstylegan.io.atomic import write_text
from opstylegan.metrics.fid import (
    Detector,
    FeatureStats,
    cached_dataset_stats,
    compute_generator_stats,
    dataset_content_hash,
    fid_from_stats,
)
from opstylegan.models.generator import Generator

METRICS_NAME = "metrics.jsonl"
BEST_NAME = "network-best"


def _default_detector(device: torch.device) -> Detector:
    from opstylegan.metrics.inception import InceptionFeatures

    return InceptionFeatures().to(device)


class SnapshotFID:
    """Measures FID at snapshots and keeps the best G_ema. `detector_factory` is swappable for tests."""

    detector_factory: Callable[[torch.device], Detector] = staticmethod(_default_detector)

    def __init__(self, dataset: ImageDataset, data_path: str, *, num_fake: int, num_real: int,
                 batch_size: int, device: torch.device) -> None:
        self.dataset, self.data_path = dataset, data_path
        self.num_fake, self.num_real = num_fake, min(num_real, len(dataset))
        self.batch_size, self.device = batch_size, device
        self.best_fid = math.inf
        self._detector: Detector | None = None
        self._real: FeatureStats | None = None

    def measure(self, G_ema: Generator) -> dict[str, Any]:
        if self._detector is None:
            self._detector = self.detector_factory(self.device)
        if self._real is None:
            self._real = cached_dataset_stats(dataset_content_hash(self.data_path),
                                              lambda: dataset_batches(self.dataset, self.num_real, self.batch_size),
                                              self._detector, max_items=self.num_real)
        fake = compute_generator_stats(G_ema, self._detector, self.num_fake, batch_size=self.batch_size,
                                       seed=0, device=self.device)
        res = fid_from_stats(self._real, fake)
        return {"fid": res.fid, "num_real": res.num_real, "num_fake": res.num_fake,
                "feature_net": res.feature_net, "feature_net_sha256": res.feature_net_sha256}

    def at_snapshot(self, run_dir: Path, G_ema: Generator, kimg: float, network_name: str) -> dict[str, Any]:
        """Measures, appends to metrics.jsonl, and saves network-best/ when FID improved."""
        m = {"kimg": kimg, "network": network_name, **self.measure(G_ema)}
        m["best"] = m["fid"] < self.best_fid
        if m["best"]:
            self.best_fid = m["fid"]
            G_ema.save_pretrained(run_dir / BEST_NAME, metadata={"kimg": kimg, "fid": m["fid"],
                                                                 "num_fake": m["num_fake"], "num_real": m["num_real"]})
            write_text(run_dir / "best.json", json.dumps(m, indent=2) + "\n")
        with open(run_dir / METRICS_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(m) + "\n")
        return m
