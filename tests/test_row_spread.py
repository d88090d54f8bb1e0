"""The rows' correlation as a model setting (`GeneratorConfig.row_spread`, `opstylegan train --row-spread`): the
paper's 0.5 leaves configs and fingerprints as they were, other values change how every sampler draws the rows
(generation, metrics and training alike), and settings that mean nothing are refused."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny

from opstylegan.cli.main import cli
from opstylegan.config import ConfigError, GeneratorConfig
from opstylegan.models.generator import Generator
from opstylegan.training import loss as L
from opstylegan.training.config import TrainConfig


def _row_correlation(z: torch.Tensor) -> float:
    """Mean correlation between different rows of Z [n, R, C] (rows are unit Gaussians)."""
    n, r, _ = z.shape
    g = torch.einsum("nic,njc->ij", z, z) / (n * z.shape[-1])  # [R, R] ~ covariance of rows
    off = g[~torch.eye(r, dtype=torch.bool)]
    return float(off.mean())


def test_default_is_not_written_so_old_configs_and_fingerprints_stay():
    cfg = tiny(overparam=True)
    assert cfg.row_spread == 0.5 and "row_spread" not in cfg.to_dict()
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg
    other = cfg.replace(row_spread=0.1)
    assert other.to_dict()["row_spread"] == 0.1 and GeneratorConfig.from_dict(other.to_dict()) == other
    torch.manual_seed(0)
    G = Generator(cfg)
    G2 = Generator(other)
    G2.load_state_dict(G.state_dict())
    assert G.fingerprint() != G2.fingerprint()  # same weights, other latent distribution: another model


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, True, "0.5"])
def test_bad_values_are_refused(bad):
    with pytest.raises(ConfigError, match="row_spread"):
        tiny(overparam=True, row_spread=bad)


def test_only_the_overparameterized_model_has_rows():
    with pytest.raises(ConfigError, match="only meaningful with overparam"):
        tiny(overparam=False, row_spread=0.2)
    with pytest.raises(ConfigError, match="only meaningful for the overparameterized"):
        TrainConfig(data="x", preset="tiny", overparam=False, row_spread=0.2)
    with pytest.raises(ConfigError, match="init_from"):
        TrainConfig(data="x", overparam=True, row_spread=0.2, init_from="fmnist32-baseline")


@pytest.mark.parametrize("spread", [0.5, 0.1, 1.0])
def test_samplers_draw_rows_with_the_models_correlation(spread):
    G = Generator(tiny(overparam=True, row_spread=spread))
    z = G.z_from_seeds(range(400))  # [400, R, C]
    assert _row_correlation(z) == pytest.approx(1 - spread, abs=0.06)
    z = G.sample_z(400, seed=1)
    assert _row_correlation(z) == pytest.approx(1 - spread, abs=0.06)
    # An explicit spread (the upcycling ramp) still wins over the model's own.
    assert _row_correlation(G.z_from_seeds(range(400), spread=0.5)) == pytest.approx(0.5, abs=0.06)


def test_the_paper_default_draws_exactly_as_before():
    G = Generator(tiny(overparam=True))
    gen = torch.Generator().manual_seed(3)
    draw = torch.randn(2, G.rows + 1, G.cfg.z_dim, generator=gen)
    want = (draw[:, 1:] + draw[:, :1]) / 2**0.5
    assert torch.equal(G.sample_z(2, seed=3), want)


def test_training_latents_follow_the_model(monkeypatch):
    seen = []
    real = L.normal_rows

    def spy(*args, **kw):
        seen.append(kw.get("spread"))
        return real(*args, **kw)

    monkeypatch.setattr(L, "normal_rows", spy)
    G = Generator(tiny(overparam=True, row_spread=0.2))
    L.sample_ws(G, 2, mixing_prob=1.0, update_emas=False, generator=torch.Generator().manual_seed(0))
    assert seen == [0.2, 0.2]  # the latent and the mixing latent
    seen.clear()
    L.sample_ws(G, 2, mixing_prob=0.0, update_emas=False, spread=0.05)  # upcycling ramp value
    assert seen == [0.05]


def test_train_config_puts_it_into_the_generator():
    cfg = TrainConfig(data="x", preset="tiny", overparam=True, row_spread=0.1).resolve(img_resolution=32,
                                                                                       img_channels=1)
    assert cfg.generator["row_spread"] == 0.1
    paper = TrainConfig(data="x", preset="tiny", overparam=True).resolve(img_resolution=32, img_channels=1)
    assert "row_spread" not in paper.generator


def test_cli_refuses_it_for_a_baseline(tmp_path):
    res = CliRunner().invoke(cli, ["train", "--data", str(tmp_path), "--outdir", str(tmp_path / "r"), "--baseline",
                                   "--row-spread", "0.2", "--device", "cpu"])
    assert res.exit_code != 0
    assert "row_spread" in res.output and "overparameterized" in res.output
