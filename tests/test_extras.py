"""What each optional extra enables (pyproject.toml [project.optional-dependencies]), tested where installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny

from opstylegan.cli.main import cli
from opstylegan.inversion.latents_io import save_latent
from opstylegan.models.generator import Generator


def test_mp4_extra_makes_interpolate_mp4_work(tmp_path):
    """`pip install opstylegan[mp4]` (imageio + imageio-ffmpeg) -> `interpolate --mp4` writes playable H.264."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="the mp4 extra is not installed")
    G = Generator(tiny(overparam=True)).eval()
    G.save_pretrained(tmp_path / "model")
    W = G.mapping(G.z_from_seeds([0, 1])).detach()  # [2, R, C]
    for i in range(2):
        save_latent(tmp_path / "lat" / f"img{i}.safetensors", W[i], space="W", fingerprint=G.fingerprint())
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["interpolate", "--model", str(tmp_path / "model"), "--latents",
                                      str(tmp_path / "lat"), "--steps", "5", "--mp4", "--outdir", str(out),
                                      "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (mp4,) = out.rglob("*.mp4")
    reader = imageio_ffmpeg.read_frames(str(mp4))  # decodes with the bundled ffmpeg binary
    meta = next(reader)
    assert meta["codec"] == "h264"
    width, height = meta["size"]
    frames = np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])  # [K, H, W, 3]
    assert frames.shape[0] >= 5 and frames.shape[-1] == 3
    with torch.no_grad():
        first = G.synthesis(W[:1], "W")  # [1, 1, 32, 32] in [-1, 1]
    want = ((first[0, 0] + 1) * 127.5).clamp(0, 255).numpy()
    # H.264 (yuv420p) is lossy: the first frame is the first latent's image up to compression error.
    assert np.abs(frames[0, :32, :32, 0].astype(np.float64) - want).mean() < 12
