"""Starting runs from pretrained weights (init_from / init_d) and upcycling a baseline into the overparameterized
generator: step 0 makes the baseline's images, the rows' correlation ramp, exact resume, refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny
from safetensors.torch import load_file

from opstylegan.cli.main import cli
from opstylegan.config import ConfigError
from opstylegan.data import build_dataset, write_idx
from opstylegan.io.nvidia import convert_pickle
from opstylegan.latent import LatentError, normal_rows, z_from_seeds
from opstylegan.models.generator import Generator
from opstylegan.training import state as S
from opstylegan.training.config import TrainConfig
from opstylegan.training.loop import Trainer, train
from opstylegan.training.upcycle import row_spread

PICKLES = Path(__file__).parent / "data" / "stylegan-pickles"


def _dataset(root: Path, name: str, res: int, channels: int, n: int = 12) -> Path:
    rng = np.random.default_rng(5)
    shape = (n, res, res) if channels == 1 else (n, res, res, channels)
    src = root / f"{name}-src"
    src.mkdir()
    if channels == 1:
        write_idx(src / "train-images-idx3-ubyte", (rng.random(shape) * 255).astype(np.uint8))
        src = src / "train-images-idx3-ubyte"
    else:
        from PIL import Image

        for i, im in enumerate((rng.random(shape) * 255).astype(np.uint8)):
            Image.fromarray(im).save(src / f"{i}.png")
    build_dataset(src, root / name, resolution=res, channels=channels)
    return root / name


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("d16"), "gray16", 16, 1)


@pytest.fixture(scope="module")
def baseline16(tmp_path_factory):
    torch.manual_seed(1)
    G = Generator(tiny(res=16))
    G._mapping.w_avg.normal_()  # a non-trivial w_avg, which must come along
    return G.eval(), G.save_pretrained(tmp_path_factory.mktemp("m") / "baseline16")


def cfg(data, **kw) -> TrainConfig:
    base = dict(data=str(data), kimg=0.012, batch=4, workers=0, tick_kimg=0.004, snap=1, grid_size=4, ada_kimg=0.1)
    return TrainConfig(**{**base, **kw})


# -- the latent ramp ------------------------------------------------------------------------------------------

def test_spread_interpolates_between_equal_rows_and_the_papers_rows():
    z = z_from_seeds([3, 4], 64)  # the baseline's latents for these seeds
    Z0 = z_from_seeds([3, 4], 64, rows=8, spread=0.0)
    assert torch.equal(Z0, z[:, None].expand(-1, 8, -1))  # a = 0: every row is the baseline's z, exactly
    half = z_from_seeds([3, 4], 64, rows=8, spread=0.5)
    assert torch.allclose(half, z_from_seeds([3, 4], 64, rows=8), atol=1e-6)  # a = 0.5: the paper's rows
    Z = normal_rows([4000, 64], rows=2, generator=torch.Generator().manual_seed(0), spread=0.2)
    a, b = Z[:, 0].flatten(), Z[:, 1].flatten()
    assert abs(a.std().item() - 1) < 0.01 and abs(b.std().item() - 1) < 0.01  # unit Gaussian rows
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item() - 0.8) < 0.01  # correlation 1 - a
    with pytest.raises(LatentError, match="spread must be in"):
        normal_rows([2, 4], rows=3, spread=1.5)


def test_row_spread_ramp_and_its_config(data16, baseline16):
    c = cfg(data16, overparam=True, init_from=str(baseline16[1]), upcycle_kimg=1.0)
    assert row_spread(c, 0) == 0.0 and row_spread(c, 500) == pytest.approx(0.25)
    assert row_spread(c, 1000) is None and row_spread(c, 5000) is None  # then the paper's sampling
    assert row_spread(cfg(data16, overparam=True), 0) is None
    r = cfg(data16, overparam=True, init_from=str(baseline16[1]), kimg=8.0).resolve(img_resolution=16,
                                                                                    img_channels=1)
    assert r.upcycle_kimg == 2.0 and r.generator["overparam"] and r.generator["channel_base"] == 512
    assert cfg(data16).resolve(img_resolution=16, img_channels=1).upcycle_kimg == 0.0
    with pytest.raises(ConfigError, match="needs overparam=true and init_from"):
        cfg(data16, upcycle_kimg=1.0)
    with pytest.raises(ConfigError, match="init_d .* needs init_from"):
        cfg(data16, init_d="x")


# -- Trainer --------------------------------------------------------------------------------------------------

def test_step0_reproduces_the_baseline_then_the_rows_separate(data16, baseline16):
    G0, path = baseline16
    tr = Trainer(cfg(data16, overparam=True, init_from=str(path), upcycle_kimg=0.008))
    assert tr.G.overparam and tr.G.rows == 32
    assert torch.equal(tr.G_ema.w_avg, G0.w_avg) and torch.equal(tr.G.w_avg, G0.w_avg)
    seeds = [0, 1, 2]
    with torch.no_grad():
        base = G0(G0.z_from_seeds(seeds))
        up = tr.G_ema(tr.G_ema.z_from_seeds(seeds, spread=row_spread(tr.cfg, 0)))
    assert (up - base).abs().max() < 1e-5
    ws = tr._sample_ws(3)  # step 0: all rows equal
    assert ws.shape[2] == 32 and torch.equal(ws, ws[:, :, :1].expand_as(ws))
    reals = torch.rand(4, 1, 16, 16) * 2 - 1
    before = {k: v.clone() for k, v in tr.G.state_dict().items()}
    tr.train_step(reals)
    assert any(not torch.equal(before[k], v) for k, v in tr.G.state_dict().items())
    ws = tr._sample_ws(3)  # a = 0.5 * 4 / 8 = 0.25: rows differ now
    assert not torch.equal(ws, ws[:, :, :1].expand_as(ws))


def test_d_warmup_trains_only_D_then_starts_the_ramp(data16, baseline16):
    c = cfg(data16, overparam=True, init_from=str(baseline16[1]), upcycle_kimg=0.008, d_warmup_kimg=0.004)
    assert row_spread(c, 4) == 0.0 and row_spread(c, 8) == pytest.approx(0.25)  # the ramp starts after it
    tr = Trainer(c)
    G0, D0, E0 = ({k: v.clone() for k, v in m.state_dict().items()} for m in (tr.G, tr.D, tr.G_ema))
    reals = torch.rand(4, 1, 16, 16) * 2 - 1
    tr.train_step(reals)  # kimg 0 -> 0.004: D only
    for before, module in ((G0, tr.G), (E0, tr.G_ema)):
        assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())  # w_avg included
    assert any(not torch.equal(v, tr.D.state_dict()[k]) for k, v in D0.items())
    tr.train_step(reals)  # now G trains too
    assert any(not torch.equal(v, tr.G.state_dict()[k]) for k, v in G0.items())
    with pytest.raises(ConfigError, match="needs init_from"):
        cfg(data16, d_warmup_kimg=1.0)
    with pytest.raises(ConfigError, match="leaves no training of G"):
        cfg(data16, init_from="x", d_warmup_kimg=1.0, kimg=1.0)


def test_upcycling_a_converted_nvidia_network(tmp_path):
    """A converted stylegan2-ada network (8 mapping layers, constant noise) upcycles: at step 0 the overparam G
    reproduces NVIDIA's noise_mode='const' images, and a training step runs."""
    ref = load_file(PICKLES / "nvlabs-ada" / "reference-outputs.safetensors")
    model = convert_pickle(PICKLES / "nvlabs-ada" / "network-snapshot-000000.pkl", tmp_path / "G")
    dmodel = convert_pickle(PICKLES / "nvlabs-ada" / "network-snapshot-000000.pkl", tmp_path / "D", which="D")
    data = _dataset(tmp_path, "rgb32", 32, 3, n=8)
    tr = Trainer(cfg(data, overparam=True, init_from=str(model), init_d=str(dmodel), aug="noaug", pl_weight=0.0))
    assert tr.G.cfg.mapping_layers == 8 and tr.G.cfg.const_noise
    with torch.no_grad():
        W = tr.G_ema.mapping(ref["z"][:, None].expand(-1, tr.G.rows, -1))
        assert (tr.G_ema.synthesis(W) - ref["img_const"]).abs().max() < 1e-4
        assert (tr.D(ref["img_const"]) - ref["d_logits"]).abs().max() < 1e-4
    tr.train_step(torch.rand(4, 3, 32, 32) * 2 - 1)


def test_mismatched_model_and_data_are_refused_naming_both(data16, tmp_path):
    path = Generator(tiny(res=32)).save_pretrained(tmp_path / "m32")
    with pytest.raises(ConfigError) as e:
        Trainer(cfg(data16, overparam=True, init_from=str(path)))
    msg = str(e.value)
    assert str(path) in msg and str(data16) in msg and "1x32px" in msg and "1x16px" in msg
    over = Generator(tiny(True, res=16)).save_pretrained(tmp_path / "over16")
    with pytest.raises(ConfigError, match="baseline run cannot start from it"):
        Trainer(cfg(data16, init_from=str(over)))
    with pytest.raises(ConfigError, match="already overparameterized"):
        Trainer(cfg(data16, overparam=True, init_from=str(over), upcycle_kimg=1.0))
    with pytest.raises(ConfigError, match="not found"):
        Trainer(cfg(data16, init_from=str(tmp_path / "nope")))


def test_upcycled_run_resumes_exactly_without_the_init_model(data16, baseline16, tmp_path):
    import shutil

    init = shutil.copytree(baseline16[1], tmp_path / "init")
    straight = train(cfg(data16, overparam=True, init_from=str(init), upcycle_kimg=0.012), outdir=tmp_path / "a")
    first = train(cfg(data16, overparam=True, init_from=str(init), upcycle_kimg=0.012, kimg=0.004),
                  outdir=tmp_path / "b")
    recorded = json.loads((first.run_dir / "config.json").read_text())
    assert recorded["init_from"] == str(init.resolve()) and recorded["upcycle_kimg"] == 0.012
    shutil.rmtree(init)  # a resume reads the training state only
    train(resume=first.run_dir, kimg=0.012)
    a = S.find_latest_state(straight.run_dir).state
    b = S.find_latest_state(first.run_dir).state
    assert a["cur_nimg"] == b["cur_nimg"] == 12
    for k in ("G", "G_ema", "D"):
        for name, t in a[k].items():
            assert torch.equal(t, b[k][name]), (k, name)


def test_init_from_a_run_folder_takes_G_G_ema_and_D(data16, tmp_path):
    run = train(cfg(data16, preset="tiny", kimg=0.008), outdir=tmp_path).run_dir
    st = S.find_latest_state(run).state
    tr = Trainer(cfg(data16, overparam=True, init_from=str(run)))
    for name, module in (("G", tr.G), ("G_ema", tr.G_ema), ("D", tr.D)):
        for k, t in module.state_dict().items():
            assert torch.equal(t, st[name][k]), (name, k)
    assert any(not torch.equal(t, st["G_ema"][k]) for k, t in st["G"].items())  # G and G_ema are distinct


def test_cli_upcycle(data16, baseline16, tmp_path):
    args = ["train", "--data", str(data16), "--outdir", str(tmp_path), "--overparam", "--init-from",
            str(baseline16[1]), "--kimg", "0.008", "--upcycle-kimg", "0.004", "--batch", "4", "--tick", "0.004",
            "--snap", "1", "--device", "cpu"]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = next(tmp_path.glob("*-gray16-overparam"))
    log = (run / "log.txt").read_text()
    assert "init from" in log and "a ramped 0 -> 0.5 over 0.004 kimg" in log
    assert "WARNING: D starts from random weights" in log
    G = Generator.from_pretrained(run / "network-latest")
    assert G.overparam and math.isfinite(G(G.z_from_seeds([0])).abs().max().item())
    r = CliRunner().invoke(cli, [*args, "--preset", "tiny"])
    assert r.exit_code == 2 and "--preset cannot be combined with --init-from" in r.output
    r = CliRunner().invoke(cli, ["train", "--data", str(data16), "--outdir", str(tmp_path), "--upcycle-kimg", "1",
                                 "--preset", "tiny", "--device", "cpu"])
    assert r.exit_code == 1 and "needs overparam=true and init_from" in r.output
