"""Helpers shared by the benchmark scripts (run as `python benchmarks/<script>.py`)."""

from __future__ import annotations

import resource

import torch


def peak_rss_gib() -> float:
    """Peak resident memory of this process. VmHWM belongs to the current program image; ru_maxrss would
    report the parent's peak when it was larger at fork time (Linux keeps it across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB -> GiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (macOS: bytes)


class RandomImages(torch.utils.data.Dataset):
    """Stands in for a dataset: uint8 noise images of the benchmarked size (only the shape matters)."""

    def __init__(self, n: int, channels: int, res: int) -> None:
        self.resolution, self.num_channels = res, channels
        self.images = torch.randint(0, 256, (n, channels, res, res), dtype=torch.uint8,
                                    generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]
