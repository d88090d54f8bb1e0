"""FID of G_ema at training snapshots, and the `network-best/` model it selects (as the paper keeps the best).

Real-image statistics are computed once per dataset content (cached by opstylegan.metrics) over
`min(len(dataset), fid_real_num)` images; every snapshot then generates `fid_num` images (seeds 0..N-1,
no truncation) through the same Inception network. With `pr` (`opstylegan train --snapshot-pr`) the features
are kept and every snapshot also records improved precision and recall (k = 3, `metrics.precision_recall`),
so a generator that drops modes shows it in metrics.jsonl while it trains (recall falls, FID may not).

Under torchrun the work is spread over the ranks, as stylegan2-ada spreads its metrics: rank r generates and
embeds its contiguous block of the seeds (and of the real images on a cache miss), the ranks' float64 feature
sums are gathered and added in rank order, and every rank computes the same FID. The value equals the
one-process value up to float rounding, and a 50k-image FID takes 1/world_size of the time, so no rank waits
at a barrier for long (NCCL's default timeout is 10 minutes). Only rank 0 reads and writes files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from opstylegan.data.dataset import ImageDataset
from opstylegan.io.atomic import write_text
from opstylegan.metrics.fid import (
    Detector,
    FeatureStats,
    compute_feature_stats,
    compute_generator_stats,
    dataset_content_hash,
    dataset_stats_cache_path,
    fid_from_stats,
)
from opstylegan.metrics.precision_recall import pr_from_stats
from opstylegan.models.generator import Generator
from opstylegan.training.distributed import DistInfo, broadcast_object, gather_objects

METRICS_NAME = "metrics.jsonl"
BEST_NAME = "network-best"


def _default_detector(device: torch.device) -> Detector:
    from opstylegan.metrics.inception import InceptionFeatures

    return InceptionFeatures().to(device)


def rank_block(n: int, info: DistInfo) -> range:
    """This rank's contiguous share of ``range(n)``; the ranks' blocks, in rank order, cover it once."""
    return range(n * info.rank // info.world_size, n * (info.rank + 1) // info.world_size)


class SnapshotFID:
    """Measures FID at snapshots and keeps the best G_ema. `detector_factory` is swappable for tests.

    With ``info`` of several ranks, :meth:`measure` and :meth:`at_snapshot` are collective: every rank calls
    them at the same snapshot.
    """

    detector_factory: Callable[[torch.device], Detector] = staticmethod(_default_detector)

    def __init__(self, dataset: ImageDataset, data_path: str, *, num_fake: int, num_real: int,
                 batch_size: int, device: torch.device, info: DistInfo | None = None, pr: bool = False) -> None:
        self.dataset, self.data_path = dataset, data_path
        self.num_fake, self.num_real = num_fake, min(num_real, len(dataset))
        self.batch_size, self.device = batch_size, device
        self.info = info if info is not None else DistInfo(device=device)
        self.best_fid = math.inf
        self.pr = pr
        self._detector: Detector | None = None
        self._real: FeatureStats | None = None

    def _merge(self, mine: FeatureStats | None) -> FeatureStats:
        parts = gather_objects(mine, self.info)  # [world_size], in rank order
        return FeatureStats.merge([p for p in parts if p is not None])  # type: ignore[misc]

    def _real_stats(self, detector: Detector) -> FeatureStats:
        """The real images' statistics: from the cache (read by rank 0, sent to all), else computed in shares."""
        path = None
        if self.info.is_main:
            path = dataset_stats_cache_path(dataset_content_hash(self.data_path), detector, max_items=self.num_real,
                                            capture_features=self.pr)
        cached = broadcast_object(path is not None and path.is_file(), self.info)
        if cached:
            loaded = FeatureStats.load(path) if path is not None else None
            return broadcast_object(loaded, self.info)  # type: ignore[return-value]
        block = rank_block(self.num_real, self.info)
        batches = (torch.stack([self.dataset[i] for i in range(start, min(start + self.batch_size, block.stop))])
                   for start in range(block.start, block.stop, self.batch_size))  # uint8 [B, C, H, W]
        mine = compute_feature_stats(batches, detector, capture_features=self.pr) if len(block) else None
        stats = self._merge(mine)
        if path is not None:
            stats.save(path)
        return stats

    def measure(self, G_ema: Generator) -> dict[str, Any]:
        """FID (and with ``pr`` precision / recall) of ``G_ema`` (seeds 0 .. num_fake - 1), the same on every rank."""
        if self._detector is None:
            self._detector = self.detector_factory(self.device)
        if self._real is None:
            self._real = self._real_stats(self._detector)
        block = rank_block(self.num_fake, self.info)
        mine = (compute_generator_stats(G_ema, self._detector, len(block), batch_size=self.batch_size,
                                        seed=block.start, capture_features=self.pr, device=self.device)
                if len(block) else None)
        fake = self._merge(mine)
        res = fid_from_stats(self._real, fake)
        out = {"fid": res.fid, "num_real": res.num_real, "num_fake": res.num_fake,
               "feature_net": res.feature_net, "feature_net_sha256": res.feature_net_sha256}
        if self.pr:
            r = pr_from_stats(self._real, fake, k=3)
            out.update(precision=r.precision, recall=r.recall, pr_k=r.k)
        return out

    def at_snapshot(self, run_dir: Path, G_ema: Generator, kimg: float, network_name: str) -> dict[str, Any]:
        """Measures (every rank), then rank 0 appends to metrics.jsonl and saves network-best/ when FID improved."""
        m = {"kimg": kimg, "network": network_name, **self.measure(G_ema)}
        m["best"] = m["fid"] < self.best_fid
        if m["best"]:
            self.best_fid = m["fid"]
        if not self.info.is_main:
            return m
        if m["best"]:
            G_ema.save_pretrained(run_dir / BEST_NAME, metadata={"kimg": kimg, "fid": m["fid"],
                                                                 "num_fake": m["num_fake"], "num_real": m["num_real"]})
            write_text(run_dir / "best.json", json.dumps(m, indent=2) + "\n")
        with open(run_dir / METRICS_NAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(m) + "\n")
        return m
