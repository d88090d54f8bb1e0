"""Generator / discriminator: the baseline-equivalence test, latent statistics, shapes, truncation, seeds."""

import pytest
import torch
from conftest import tiny, tiny_d

from opstylegan import Discriminator, Generator
from opstylegan.config import ConfigError, GeneratorConfig, preset
from opstylegan.latent import LatentError, broadcast, normal_rows


def _pair(**kw):
    base = Generator(tiny(False, **kw))
    over = Generator(tiny(True, **kw))
    over.load_state_dict(base.state_dict())  # same parameter set: only the latent differs
    with torch.no_grad():  # a non-trivial w_avg, so truncation is exercised too
        base._mapping.w_avg.normal_()
        over._mapping.w_avg.copy_(base.w_avg)
    return base.eval(), over.eval()


@pytest.mark.parametrize("channels", [1, 3])
def test_overparam_with_equal_rows_equals_baseline(channels):
    """THE key test: G_overparam(W = repeat(w)) == G_baseline(w), same weights, through the style-matrix path."""
    base, over = _pair(channels=channels)
    w = base.mapping(base.sample_z(3, seed=1), truncation_psi=0.7)  # [3, C]
    W = w[:, None, :].repeat(1, over.rows, 1)  # [3, R, C], every row equal, a real matrix (not a broadcast)
    with torch.no_grad():
        ref = base.synthesis(w)
        got = over.synthesis(W)
        got_fused = base.synthesis(w, fused=True)
    assert got.shape == ref.shape == (3, channels, 32, 32)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    assert torch.allclose(got_fused, ref, atol=1e-5)


def test_overparam_rows_matter():
    """Different rows give a different image than their mean: the extra freedom is real."""
    _, over = _pair()
    W = over.mapping(over.sample_z(2, seed=3))
    with torch.no_grad():
        a = over.synthesis(W)
        b = over.synthesis(W.mean(dim=1, keepdim=True).expand_as(W))
    assert (a - b).abs().mean() > 1e-2


def test_overparam_mapping_is_rowwise():
    _, over = _pair()
    z = over.sample_z(2, seed=0)  # [2, R, z_dim]
    W = over.mapping(z)
    row = over._mapping(z[:, 5])  # mapping one row alone
    assert torch.allclose(W[:, 5], row, atol=1e-6)


def test_z_rows_are_unit_gaussian_with_correlation_half():
    rows, z_dim, n = 8, 64, 4000
    g = torch.Generator().manual_seed(123)
    z = normal_rows([n, z_dim], rows=rows, generator=g)  # [N, R, D]
    x = z.permute(1, 0, 2).reshape(rows, -1)  # [R, N*D]: each row's samples
    assert torch.allclose(x.mean(dim=1), torch.zeros(rows), atol=0.01)
    assert torch.allclose(x.std(dim=1), torch.ones(rows), atol=0.01)
    corr = torch.corrcoef(x)
    off = corr[~torch.eye(rows, dtype=torch.bool)]
    # 256k samples per pair: the standard error of a correlation near 0.5 is ~0.0015.
    assert torch.allclose(off, torch.full_like(off, 0.5), atol=0.01), off


def test_independent_rows_would_fail_the_correlation_test():
    """Guard that the statistical test can fail: i.i.d. rows have correlation ~0."""
    x = torch.randn(8, 256000, generator=torch.Generator().manual_seed(0))
    off = torch.corrcoef(x)[~torch.eye(8, dtype=torch.bool)]
    assert (off - 0.5).abs().min() > 0.4


@pytest.mark.parametrize("res,num_ws", [(16, 6), (32, 8), (64, 10), (128, 12), (256, 14)])
@pytest.mark.parametrize("overparam", [False, True])
def test_shapes_and_num_ws(res, num_ws, overparam):
    G = Generator(tiny(overparam, res=res, channels=3))
    D = Discriminator(tiny_d(res=res, channels=3))
    assert G.num_ws == num_ws
    z = G.sample_z(2, seed=0)
    assert z.shape == ((2, G.rows, 64) if overparam else (2, 64))
    with torch.no_grad():
        img = G(z)
        logits = D(img)
    assert img.shape == (2, 3, res, res)
    assert logits.shape == (2, 1)
    assert torch.isfinite(img).all() and torch.isfinite(logits).all()


def test_paper_config_channels_and_rows():
    cfg = preset("auto", img_resolution=256, overparam=True).generator
    assert cfg.rows == 512 and cfg.max_out_channels == 512 and cfg.mapping_layers == 2
    assert preset("auto", img_resolution=1024).generator.channel_base == 32768


def test_latent_spaces_give_same_image():
    _, G = _pair()
    W = G.mapping(G.sample_z(2, seed=4))
    w = W[:, 0]
    with torch.no_grad():
        img_W = G.synthesis(W, "W")
        img_Wplus = G.synthesis(broadcast(W, "W", "W+", num_ws=G.num_ws, rows=G.rows), "W+")
        img_w = G.synthesis(w, "w")
        img_wplus = G.synthesis(broadcast(w, "w", "w+", num_ws=G.num_ws, rows=G.rows), "w+")
        img_w_as_W = G.synthesis(broadcast(w, "w", "W", num_ws=G.num_ws, rows=G.rows), "W")
    assert torch.allclose(img_W, img_Wplus, atol=1e-6)
    assert torch.allclose(img_w, img_wplus, atol=1e-6)
    assert torch.allclose(img_w, img_w_as_W, atol=1e-5)
    with pytest.raises(LatentError, match="without losing information"):
        broadcast(W, "W", "w", num_ws=G.num_ws, rows=G.rows)


def test_space_errors():
    base, over = _pair()
    with pytest.raises(LatentError, match="needs an overparameterized model"):
        base.synthesis(torch.zeros(1, 32, 64), "W")
    with pytest.raises(LatentError, match="unknown latent space"):
        over.synthesis(torch.zeros(1, 64), "z")
    with pytest.raises(LatentError, match=r"shape \[B, 32, 64\]"):
        over.synthesis(torch.zeros(1, 31, 64), "W")
    with pytest.raises(ValueError, match="z for this overparam generator"):
        over.mapping(torch.zeros(2, 64))


def test_truncation():
    base, over = _pair()
    for G in (base, over):
        z = G.sample_z(3, seed=0)
        w1 = G.mapping(z)
        w0 = G.mapping(z, truncation_psi=0.0)
        wh = G.mapping(z, truncation_psi=0.5)
        assert torch.allclose(w0, G.w_avg.expand_as(w0), atol=1e-6)
        assert torch.allclose(wh, G.w_avg + 0.5 * (w1 - G.w_avg), atol=1e-6)
        for bad in (2.5, -3.0, float("nan"), "0.7"):
            with pytest.raises(ValueError, match="truncation_psi"):
                G.mapping(z, truncation_psi=bad)


def test_w_avg_tracks_all_rows():
    _, G = _pair()
    G._mapping.w_avg.zero_()
    z = G.sample_z(4, seed=0)
    W = G.mapping(z, update_emas=True)
    assert torch.allclose(G.w_avg, (1 - G.cfg.w_avg_beta) * W.reshape(-1, W.shape[-1]).mean(0), atol=1e-6)


@pytest.mark.parametrize("overparam", [False, True])
def test_same_seed_same_image_whatever_the_batch(overparam):
    G = Generator(tiny(overparam)).eval()
    with torch.no_grad():
        batch = G(G.z_from_seeds([5, 6, 7]), truncation_psi=0.8)
        alone = G(G.z_from_seeds([6]), truncation_psi=0.8)
    assert torch.allclose(batch[1:2], alone, atol=1e-5)
    assert not torch.allclose(batch[0], batch[1])


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(img_resolution=48), "power of two"),
        (dict(img_resolution=8), "power of two"),
        (dict(img_channels=2), "img_channels must be 1 or 3"),
        (dict(overparam=True, num_rows=16), "num_rows=16 is smaller than the largest layer's output channels"),
        (dict(num_rows=64), "only meaningful with overparam"),
        (dict(w_avg_beta=1.0), "w_avg_beta"),
    ],
)
def test_config_errors(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        GeneratorConfig(**{**tiny().to_dict(), **kw})


def test_config_unknown_key():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['mapping_layer'\]"):
        GeneratorConfig.from_dict({**tiny().to_dict(), "mapping_layer": 8})


def test_discriminator_input_check_and_mbstd_odd_batch():
    D = Discriminator(tiny_d())
    with pytest.raises(ValueError, match=r"expects images \[N, 1, 32, 32\]"):
        D(torch.zeros(2, 3, 32, 32))
    assert D(torch.randn(3, 1, 32, 32)).shape == (3, 1)  # group size falls back to a divisor of 3


def test_r1_and_path_length_double_backward_through_networks():
    """R1 and the path-length regularizer need grad-of-grad through both networks."""
    G = Generator(tiny(True))
    D = Discriminator(tiny_d())
    real = torch.randn(2, 1, 32, 32, requires_grad=True)
    (g,) = torch.autograd.grad(D(real).sum(), real, create_graph=True)
    g.square().sum().backward()
    # Every weight gets an R1 gradient (biases of the output layer cannot affect d logits / d image).
    assert all(p.grad is not None for n, p in D.named_parameters() if n.endswith("weight"))
    W = G.mapping(G.sample_z(2, seed=0))
    ws = W[:, None].expand(-1, G.num_ws, -1, -1).detach().requires_grad_(True)  # [B, L, R, C]
    img = G.synthesis_ws(ws)
    (gw,) = torch.autograd.grad((img * torch.randn_like(img)).sum(), ws, create_graph=True)
    gw.square().sum(-1).mean(dim=[1, 2]).sqrt().mean().backward()
    assert G._synthesis.blocks[-1].conv1.weight.grad is not None


def test_float64_networks_for_exact_checks():
    """G.double() / D.double() run entirely in float64 (useful for exact numerical tests)."""
    base, over = _pair()
    over = over.double()
    W = over.mapping(over.sample_z(2, seed=0).double())
    img = over.synthesis(W)
    assert W.dtype == img.dtype == torch.float64
    D = Discriminator(tiny_d()).double()
    assert D(img).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_and_stays_close(dtype):
    """Mixed precision through torch.autocast (bf16 / fp16): forward, D, and backward work."""
    G = Generator(tiny(True, channels=3))
    D = Discriminator(tiny_d(channels=3))
    z = G.sample_z(2, seed=0)
    ref = G(z).detach()
    with torch.autocast("cpu", dtype=dtype):
        img = G(z)
        logits = D(img)
    assert torch.isfinite(img).all() and torch.isfinite(logits).all()
    assert (img.float() - ref).abs().max() < 0.2  # bf16 has 8 bits of mantissa
    logits.float().sum().backward()
    assert G._synthesis.blocks[0].conv1.weight.grad is not None
