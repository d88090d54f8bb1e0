"""Training building blocks: losses and regularizers against their formulas, EMA, lazy Adam, TrainConfig,
and one Trainer step (CPU, tiny 16x16 networks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from opstylegan.config import ConfigError
from opstylegan.data import build_dataset, write_idx
from opstylegan.models.generator import Generator
from opstylegan.training import loss as L
from opstylegan.training.config import TrainConfig, auto_batch, auto_gamma, auto_lr
from opstylegan.training.ema import ema_beta, update_ema
from opstylegan.training.loop import Trainer, TrainingDiverged, images_to_float, lazy_adam


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    images = (rng.random((24, 16, 16)) * 255).astype(np.uint8)
    write_idx(root / "train-images-idx3-ubyte", images)
    build_dataset(root / "train-images-idx3-ubyte", root / "ds", resolution=16, channels=1)
    return root / "ds"


def tiny_cfg(data, **kw) -> TrainConfig:
    base = dict(data=str(data), preset="tiny", kimg=0.008, batch=4, workers=0, tick_kimg=0.004, snap=1,
                grid_size=4, ada_kimg=0.1)
    return TrainConfig(**{**base, **kw})


# -- losses --------------------------------------------------------------------------------------------

def test_logistic_losses_match_formulas():
    real = torch.tensor([[2.0], [-1.0]])
    fake = torch.tensor([[0.5], [-3.0]])
    assert L.g_nonsaturating_loss(torch.zeros(3, 1)).item() == pytest.approx(math.log(2))
    assert L.g_nonsaturating_loss(fake).item() == pytest.approx(F.softplus(-fake).mean().item())
    expect = (math.log1p(math.exp(0.5)) + math.log1p(math.exp(-3.0))) / 2 + \
        (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2
    assert L.d_logistic_loss(real, fake).item() == pytest.approx(expect, rel=1e-6)


def test_r1_penalty_is_squared_input_gradient():
    # D(x) = sum(a * x) + sum(x^2): dD/dx = a + 2x, so R1 = sum((a + 2x)^2) per image.
    a = torch.randn(1, 1, 4, 4)
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    logits = ((a * x) + x.square()).sum(dim=[1, 2, 3])[:, None]
    penalty = L.d_r1_penalty(logits, x)
    torch.testing.assert_close(penalty, (a + 2 * x).square().sum(dim=[1, 2, 3]).detach())
    penalty.sum().backward()  # double backward works
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("rows", [1, 5])
def test_path_length_formula(rows, mode):
    # img = <A, ws> per pixel: the gradient of <img, y> w.r.t. ws is A y, known in closed form.
    B, Lw, C, H = 3, 4, 6, 4
    A = torch.randn(Lw, rows, C, H * H)
    ws = torch.randn(B, Lw, rows, C, requires_grad=True)
    img = torch.einsum("blrc,lrcp->bp", ws, A).reshape(B, 1, H, H)  # [B, H*W] -> [B, 1, H, W]
    lengths = L.path_lengths(img, ws, rows=mode, generator=torch.Generator().manual_seed(3))
    y = torch.randn(img.shape, generator=torch.Generator().manual_seed(3)) / H  # noise / sqrt(H*W)
    g = torch.einsum("lrcp,bp->blrc", A, y.reshape(B, -1))
    if mode == "sum":  # each layer's rows x C matrix is its latent: sum over rows AND C, mean over layers
        expect = g.square().sum(dim=[2, 3]).mean(dim=1).sqrt()
    else:  # the pre-0.2 formula: rows averaged like layers
        expect = g.square().sum(dim=3).mean(dim=[1, 2]).sqrt()
    torch.testing.assert_close(lengths.detach(), expect)


def test_path_length_rows_option_is_checked():
    ws = torch.randn(1, 1, 1, 2, requires_grad=True)
    with pytest.raises(ValueError, match="rows must be one of"):
        L.path_lengths(ws.sum().reshape(1, 1, 1, 1), ws, rows="max")


def test_pl_mean_update_and_penalty():
    m = L.update_pl_mean(torch.tensor(1.0), torch.tensor(3.0), 0.01)
    assert m.item() == pytest.approx(1.02)
    torch.testing.assert_close(L.path_length_penalty(torch.tensor([1.0, 2.0]), torch.tensor(1.5)),
                               torch.tensor([0.25, 0.25]))


def test_mixing_cutoff_range_and_probability():
    g = torch.Generator().manual_seed(0)
    cuts = [L.mixing_cutoff(6, 0.9, generator=g) for _ in range(2000)]
    mixed = [c for c in cuts if c < 6]
    assert set(mixed) == {1, 2, 3, 4, 5}
    assert abs(len(mixed) / len(cuts) - 0.9) < 0.03
    assert all(L.mixing_cutoff(6, 0.0, generator=g) == 6 for _ in range(50))


@pytest.mark.parametrize("overparam", [False, True])
def test_sample_ws_shapes_and_mixing(overparam):
    from conftest import tiny

    G = Generator(tiny(overparam=overparam, res=16))
    g = torch.Generator().manual_seed(1)
    ws = L.sample_ws(G, 3, mixing_prob=1.0, update_emas=False, generator=g)
    assert ws.shape == (3, G.num_ws, G.rows, G.cfg.w_dim)
    # Mixed: the first layer and the last layer come from different latents (vectors or matrices).
    assert not torch.equal(ws[:, 0], ws[:, -1])
    unmixed = L.sample_ws(G, 3, mixing_prob=0.0, update_emas=False, generator=g)
    assert torch.equal(unmixed[:, 0], unmixed[:, -1])
    if overparam:  # the latent is a matrix of distinct rows
        assert not torch.equal(unmixed[:, 0, 0], unmixed[:, 0, 1])


def test_sample_ws_updates_w_avg_only_when_asked():
    from conftest import tiny

    G = Generator(tiny(overparam=True, res=16))
    L.sample_ws(G, 2, mixing_prob=0.9, update_emas=False, generator=torch.Generator().manual_seed(0))
    assert torch.count_nonzero(G.w_avg) == 0
    L.sample_ws(G, 2, mixing_prob=0.9, update_emas=True, generator=torch.Generator().manual_seed(0))
    assert torch.count_nonzero(G.w_avg) > 0


# -- EMA, optimizer ------------------------------------------------------------------------------------

def test_ema_beta_rampup():
    assert ema_beta(16, 0, 5.0, 0.05) == 0.0  # G_ema starts as a copy of G
    assert ema_beta(16, 10_000_000, 5.0, 0.05) == pytest.approx(0.5 ** (16 / 5000))
    assert ema_beta(16, 20_000, 5.0, 0.05) == pytest.approx(0.5 ** (16 / 1000))  # ramp-up: 20k * 0.05
    assert ema_beta(16, 0, 5.0, None) == pytest.approx(0.5 ** (16 / 5000))


def test_update_ema_lerps_params_and_copies_buffers():
    from conftest import tiny

    G, G_ema = Generator(tiny(res=16)), Generator(tiny(res=16))
    G.w_avg.fill_(2.0)
    p, p_ema = next(G.parameters()).detach().clone(), next(G_ema.parameters()).detach().clone()
    update_ema(G_ema, G, 0.25)
    torch.testing.assert_close(next(G_ema.parameters()), p + 0.25 * (p_ema - p))
    assert torch.equal(G_ema.w_avg, G.w_avg)


def test_lazy_adam_correction():
    opt = lazy_adam([torch.nn.Parameter(torch.zeros(1))], lr=0.0025, betas=(0.0, 0.99), eps=1e-8, reg_interval=16)
    c = 16 / 17
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(0.0025 * c)
    assert group["betas"] == pytest.approx((0.0, 0.99**c))
    plain = lazy_adam([torch.nn.Parameter(torch.zeros(1))], lr=0.0025, betas=(0.0, 0.99), eps=1e-8, reg_interval=None)
    assert plain.param_groups[0]["lr"] == 0.0025


# -- config --------------------------------------------------------------------------------------------

def test_auto_heuristics():
    assert auto_batch(256) == 16 and auto_batch(128) == 32 and auto_batch(32) == 32
    assert auto_batch(256, gpus=4) == 64 and auto_batch(1024, gpus=8) == 32
    assert auto_gamma(256, 16) == pytest.approx(0.8192)
    assert auto_lr(1024) == 0.002 and auto_lr(256) == 0.0025


def test_train_config_resolve_and_validation():
    cfg = TrainConfig(data="x", preset="tiny", overparam=True).resolve(img_resolution=32, img_channels=1)
    assert cfg.batch == 32 and cfg.gamma == pytest.approx(0.0002 * 32**2 / 32) and cfg.ema_kimg == 10.0
    assert cfg.generator["overparam"] and cfg.discriminator["mbstd_group_size"] == 4
    assert TrainConfig.from_dict(cfg.to_json_dict()) == cfg  # JSON round trip (betas list -> tuple)
    fp32 = TrainConfig(data="x", preset="small", fp32=True).resolve(img_resolution=64, img_channels=3)
    assert fp32.generator["num_fp16_res"] == 0 and fp32.discriminator["num_fp16_res"] == 0
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['kimgs'\]"):
        TrainConfig.from_dict({"data": "x", "kimgs": 3})
    with pytest.raises(ConfigError, match="aug must be one of \\['ada', 'noaug'\\], got 'fixed'"):
        TrainConfig(aug="fixed")
    with pytest.raises(ConfigError, match="batch=6 is not divisible by the number of processes \\(4\\)"):
        TrainConfig(data="x", batch=6).resolve(img_resolution=32, img_channels=1, world_size=4)
    with pytest.raises(ConfigError, match="gamma must be a number >= 0"):
        TrainConfig(gamma=-1.0)
    with pytest.raises(ConfigError, match="dataset has 3x32px"):
        cfg.resolve(img_resolution=32, img_channels=3)


# -- one trainer step ----------------------------------------------------------------------------------

@pytest.mark.parametrize("overparam", [False, True])
def test_trainer_step_updates_everything(dataset_dir, overparam):
    tr = Trainer(tiny_cfg(dataset_dir, overparam=overparam, ada_interval=1))
    reals = images_to_float(torch.stack([tr.dataset[i] for i in range(4)]), tr.device)
    g0 = [p.detach().clone() for p in tr.G.parameters()]
    d0 = [p.detach().clone() for p in tr.D.parameters()]
    tr.train_step(reals)
    assert tr.cur_nimg == 4 and tr.batch_idx == 1
    assert any(not torch.equal(a, b) for a, b in zip(g0, tr.G.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(d0, tr.D.parameters(), strict=True))
    # beta = 0 at cur_nimg = 0: G_ema is exactly G after the first step, w_avg included.
    for a, b in zip(tr.G_ema.state_dict().values(), tr.G.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.count_nonzero(tr.G.w_avg) > 0
    assert tr.pl_mean.item() > 0  # path-length regularizer ran at step 0
    assert set(tr._tick_sums) == {"Gmain", "Gpl", "Dmain", "Dr1"} and all(tr._tick_sums.values())
    assert tr.ada is not None and tr.ada.p != 0.0  # adjusted after ada_interval = 1 step
    tr.train_step(reals)  # step 1: no lazy regularizers
    assert len(tr._tick_sums["Gpl"]) == 1 and len(tr._tick_sums["Dmain"]) == 2


def test_trainer_refuses_wrong_batch(dataset_dir):
    tr = Trainer(tiny_cfg(dataset_dir))
    with pytest.raises(ValueError, match="expects 4 real images on this rank, got 3"):
        tr.train_step(torch.zeros(3, 1, 16, 16))


def test_nan_loss_stops_with_term_and_step(dataset_dir, monkeypatch):
    tr = Trainer(tiny_cfg(dataset_dir, r1_interval=2))
    reals = images_to_float(torch.stack([tr.dataset[i] for i in range(4)]), tr.device)
    for _ in range(2):
        tr.train_step(reals)
    real_penalty = L.d_r1_penalty
    monkeypatch.setattr(L, "d_r1_penalty", lambda logits, img: real_penalty(logits, img) * float("nan"))
    steps = []
    real_step = tr.opt_D.step
    monkeypatch.setattr(tr.opt_D, "step", lambda *a, **k: (steps.append(1), real_step(*a, **k))[1])
    with pytest.raises(TrainingDiverged, match=r"^loss Dr1 is nan at step 2 \(kimg 0\.008\)") as err:
        tr.train_step(reals)
    assert err.value.term == "Dr1"
    assert len(steps) == 1  # Dmain of step 2 stepped; the NaN R1 phase stopped before its optimizer step
    assert all(torch.isfinite(p).all() for p in tr.D.parameters())
