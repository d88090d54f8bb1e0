"""Editing library: interpolation, GANSpace, editability metrics, non-injectivity (tiny 32x32 models, CPU)."""

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import tiny
from PIL import Image

from opstylegan.editing import (
    CovarianceAccumulator,
    GANSpace,
    GANSpaceError,
    LatentMismatchError,
    MissingVideoBackendError,
    apply_direction,
    edit_latents,
    editability_metrics,
    fit_ganspace,
    interpolation_ts,
    iter_pairs,
    lerp_path,
    load_ganspace,
    load_latent_set,
    non_injectivity,
    num_pairs,
    parse_layers,
    pca_from_covariance,
    render_latents,
    save_gif,
    save_mp4,
)
from opstylegan.editing import interpolate as interp_mod
from opstylegan.editing.editability import path_points
from opstylegan.inversion.latents_io import LatentFileError, save_latent
from opstylegan.metrics.fid import FeatureStats, compute_feature_stats, fid_from_stats, images_to_uint8
from opstylegan.models.generator import Generator


def make_G(overparam: bool, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(tiny(overparam=overparam)).eval()


@pytest.fixture(scope="module")
def G_over() -> Generator:
    return make_G(True)


@pytest.fixture(scope="module")
def G_base() -> Generator:
    return make_G(False)


@pytest.fixture(scope="module")
def lpips():
    from opstylegan.metrics.lpips import LPIPS

    return LPIPS("vgg")


class PixelFeatures:
    """A small deterministic stand-in for Inception: a fixed random projection of the pixels (16-d)."""

    name = "pixel-projection"
    sha256 = "0" * 64

    def __init__(self, pixels: int = 32 * 32) -> None:
        self.proj = torch.randn(pixels, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8
        return ((images.double().flatten(1) / 255) @ self.proj).float()  # [N, C*H*W] -> [N, 16]


# ----------------------------------------------------------------------------------------------------------
# Interpolation.

@pytest.mark.parametrize("overparam,space", [(True, "W"), (True, "W+"), (False, "w"), (False, "w+")])
def test_path_endpoints_reproduce_the_inputs(overparam, space):
    G = make_G(overparam)
    base = G.mapping(G.z_from_seeds([3, 4])).detach()
    from opstylegan.latent import broadcast

    lat = broadcast(base, G.native_space, space, num_ws=G.num_ws, rows=G.rows)
    if space.endswith("+"):  # make the layers differ, so a real w+ / W+ latent is interpolated
        lat = lat + 0.1 * torch.randn(lat.shape, generator=torch.Generator().manual_seed(0))
    path = lerp_path(lat[:1], lat[1:], interpolation_ts(5))[0]  # [5, *shape]
    torch.testing.assert_close(path[0], lat[0], rtol=0, atol=0)
    torch.testing.assert_close(path[-1], lat[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(path[2], (lat[0] + lat[1]) / 2, rtol=0, atol=1e-6)
    imgs = render_latents(G, path, space, batch_size=2)
    with torch.no_grad():
        ends = G.synthesis(lat, space).clamp(-1, 1)
    torch.testing.assert_close(imgs[0], ends[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(imgs[-1], ends[1], rtol=0, atol=1e-5)
    assert (imgs[2] - imgs[0]).abs().max() > 1e-3  # the middle is a different image


def test_interpolation_ts_and_pairs():
    assert interpolation_ts(3).tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        interpolation_ts(1)
    assert num_pairs(100) == 4950
    assert len(list(iter_pairs(100))) == 4950
    assert list(iter_pairs(4)) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert list(iter_pairs(4, all_pairs=False)) == [(0, 1), (1, 2), (2, 3)]
    sub = list(iter_pairs(100, max_pairs=10))
    assert len(sub) == 10 and len(set(sub)) == 10
    assert max(j for _, j in sub) > 50  # spread over the set, not the first few pairs of image 0
    assert sub == list(iter_pairs(100, max_pairs=10))
    with pytest.raises(ValueError, match="at least 2 latents"):
        list(iter_pairs(1))


def _save(path, G, latent, space):
    save_latent(path, latent, space=space, fingerprint=G.fingerprint())
    return path


def test_latent_set_refuses_mismatched_spaces_and_models(tmp_path, G_over):
    w = G_over.mapping(G_over.z_from_seeds([0, 1])).detach()
    a = _save(tmp_path / "a.safetensors", G_over, w[0], "W")
    b = _save(tmp_path / "b.safetensors", G_over, w[1], "W")
    wp = _save(tmp_path / "wplus.safetensors", G_over, w[1, 0].expand(G_over.num_ws, -1).clone(), "w+")
    lset = load_latent_set([a, b], G_over)
    assert lset.space == "W" and lset.latents.shape == (2, *G_over.latent_shape("W")) and lset.names == ("a", "b")
    with pytest.raises(LatentMismatchError, match=r"different spaces.*a\.safetensors.*'W'.*wplus\.safetensors.*'w\+'"):
        load_latent_set([a, wp])
    other = make_G(True, seed=1)
    c = _save(tmp_path / "c.safetensors", other, other.mapping(other.z_from_seeds([0])).detach()[0], "W")
    with pytest.raises(LatentMismatchError, match=r"different models.*a\.safetensors.*c\.safetensors"):
        load_latent_set([a, c])
    with pytest.raises(LatentFileError, match="another model"):
        load_latent_set([c], G_over)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_latent_set([a, tmp_path / "missing.safetensors"])
    sub = tmp_path / "sub"
    sub.mkdir()
    for name in ("b", "a"):
        (sub / f"{name}.safetensors").write_bytes((tmp_path / f"{name}.safetensors").read_bytes())
    folder = load_latent_set([sub], G_over)  # a folder stands for its files, sorted by name
    assert folder.names == ("a", "b")
    torch.testing.assert_close(folder.latents, lset.latents)
    with pytest.raises(LatentMismatchError, match="different"):
        load_latent_set([tmp_path])  # a, b, c (other model), wplus (other space)


def test_gif_is_written_and_readable(tmp_path):
    frames = np.stack([np.full((8, 6, 1), v, np.uint8) for v in (0, 60, 120, 250)])
    path = save_gif(tmp_path / "a.gif", frames, fps=20)
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 4 and im.info["loop"] == 0 and im.info["duration"] == 50
        got = []
        for k in range(im.n_frames):
            im.seek(k)
            got.append(np.asarray(im.convert("L")))
    np.testing.assert_array_equal(np.stack(got), frames[..., 0])  # grayscale frames are stored exactly
    save_gif(tmp_path / "p.gif", frames, pingpong=True)
    with Image.open(tmp_path / "p.gif") as im:
        assert im.n_frames == 6  # 0 1 2 3 2 1
    rgb = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    save_gif(tmp_path / "rgb.gif", rgb)
    with Image.open(tmp_path / "rgb.gif") as im:
        assert im.n_frames == 3 and im.size == (8, 8)
    with pytest.raises(ValueError, match="uint8 array"):
        save_gif(tmp_path / "bad.gif", frames.astype(np.float32))
    with pytest.raises(ValueError, match="fps"):
        save_gif(tmp_path / "bad.gif", frames, fps=0)


def test_mp4_without_backend_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(interp_mod, "mp4_available", lambda: False)
    with pytest.raises(MissingVideoBackendError, match="pip install imageio imageio-ffmpeg"):
        save_mp4(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), np.uint8))
    assert not (tmp_path / "a.mp4").exists()


# ----------------------------------------------------------------------------------------------------------
# GANSpace.

def test_pca_recovers_a_planted_direction():
    g = torch.Generator().manual_seed(0)
    dim, n = 24, 4000
    u = torch.randn(dim, generator=g, dtype=torch.float64)
    u /= u.norm()
    x = 0.3 * torch.randn(n, dim, generator=g, dtype=torch.float64)  # isotropic noise, variance 0.09
    x += (2.0 * torch.randn(n, 1, generator=g, dtype=torch.float64)) * u  # variance 4 along u
    x += 5.0  # an offset the PCA must remove
    acc = CovarianceAccumulator(dim)
    for chunk in x.split(333):  # streamed in uneven chunks
        acc.update(chunk)
    comps, variances, ratio = pca_from_covariance(acc.cov, 3)
    assert abs(float(comps[0] @ u)) > 0.999
    assert comps[0].abs().argmax() == comps[0].argmax()  # sign rule: largest entry positive
    torch.testing.assert_close(comps @ comps.T, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-10)
    ref = np.sort(np.linalg.eigvalsh(np.cov(x.numpy(), rowvar=False)))[::-1]  # parity with numpy
    np.testing.assert_allclose(variances.numpy(), ref[:3], rtol=1e-9)
    np.testing.assert_allclose(float(ratio[0]), ref[0] / ref.sum(), rtol=1e-9)
    assert 3.6 < float(variances[0]) < 4.5 and float(variances[1]) < 0.12
    with pytest.raises(ValueError, match=r"num_components must be an int in \[1, 24\]"):
        pca_from_covariance(acc.cov, 25)


def test_fit_ganspace_is_deterministic_and_batch_independent(G_over, G_base):
    a = fit_ganspace(G_over, 300, 4, seed=3, batch_size=2, fingerprint="x")
    b = fit_ganspace(G_over, 300, 4, seed=3, batch_size=64, fingerprint="x")
    torch.testing.assert_close(a.components, b.components, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.std, b.std, rtol=1e-5, atol=0)
    assert a.num_samples == 300 and a.rows_per_matrix == G_over.rows
    assert bool((a.std[:-1] >= a.std[1:]).all()) and float(a.explained_variance_ratio.sum()) < 1
    one = fit_ganspace(G_over, 300, 4, rows_per_matrix=1, fingerprint="x")
    assert one.rows_per_matrix == 1 and not torch.allclose(one.std, a.std)
    base = fit_ganspace(G_base, 100, 4)
    assert base.rows_per_matrix is None and base.fingerprint == G_base.fingerprint()
    with pytest.raises(ValueError, match="rows_per_matrix"):
        fit_ganspace(G_over, 300, 4, rows_per_matrix=G_over.rows + 1)
    with pytest.raises(ValueError, match="num_samples"):
        fit_ganspace(G_base, 4, 4)


def test_ganspace_file_roundtrip_and_refusal(tmp_path, G_over, G_base):
    gs = fit_ganspace(G_over, 200, 3)
    st, js = gs.save(tmp_path / "g.safetensors")
    assert js.name == "g.json" and '"explained_variance_ratio"' in js.read_text()
    back = load_ganspace(st, G_over)
    torch.testing.assert_close(back.components, gs.components)
    assert back.rows_per_matrix == gs.rows_per_matrix and back.num_samples == 200
    with pytest.raises(GANSpaceError, match="another model"):
        load_ganspace(st, G_base)
    with pytest.raises(FileNotFoundError):
        load_ganspace(tmp_path / "nope.safetensors")


def _toy_ganspace(G) -> GANSpace:
    c = G.w_avg.shape[0]
    comps = torch.eye(c)[:2]
    return GANSpace(comps, torch.zeros(c), torch.tensor([2.0, 0.5]), torch.tensor([0.3, 0.1]), G.fingerprint(),
                    100, G.rows, 0, 1.0)


@pytest.mark.parametrize("space", ["W", "W+"])
def test_edit_with_sigma_zero_is_the_identity(G_over, space):
    from opstylegan.latent import broadcast

    gs = _toy_ganspace(G_over)
    W = G_over.mapping(G_over.z_from_seeds([5])).detach()
    lat = broadcast(W, "W", space, num_ws=G_over.num_ws, rows=G_over.rows)[0]
    with torch.no_grad():
        ref = G_over.synthesis(lat[None], space)
    for layers in (None, range(2, 5)):
        edited, out_space = edit_latents(G_over, lat, space, gs, 0, [0.0], layers=layers)
        with torch.no_grad():
            img = G_over.synthesis(edited, out_space)
        torch.testing.assert_close(img, ref, rtol=0, atol=1e-6)
    edited, out_space = edit_latents(G_over, lat, space, gs, 0, [0.0, 1.5])
    assert out_space == space
    torch.testing.assert_close(edited[0], lat, rtol=0, atol=0)


def test_edit_adds_sigma_std_c_to_every_row_and_only_in_the_layers(G_over, G_base):
    gs = _toy_ganspace(G_over)
    W = G_over.mapping(G_over.z_from_seeds([5])).detach()
    edited, space = edit_latents(G_over, W, "W", gs, 1, [-2.0, 3.0])
    assert space == "W" and edited.shape == (2, G_over.rows, G_over.w_avg.shape[0])
    diff = edited - W  # [2, R, C]
    expect = torch.stack([-2.0 * 0.5 * gs.components[1], 3.0 * 0.5 * gs.components[1]])  # [2, C]
    torch.testing.assert_close(diff, expect[:, None].expand_as(diff), rtol=0, atol=1e-6)
    edited, space = edit_latents(G_over, W, "W", gs, 0, [1.0], layers=parse_layers("1-2", G_over.num_ws))
    assert space == "W+" and edited.shape == (1, G_over.num_ws, G_over.rows, W.shape[-1])
    moved = (edited - W[:, None]).abs().sum(dim=(2, 3))[0]  # per layer
    assert moved[1] > 0 and moved[2] > 0 and moved[0] == 0 and moved[3:].sum() == 0
    w = G_base.mapping(G_base.z_from_seeds([1])).detach()
    out, space = apply_direction(w, "w", torch.ones(w.shape[-1]), num_ws=G_base.num_ws, rows=1, layers=[0])
    assert space == "w+" and out.shape == (1, G_base.num_ws, w.shape[-1])
    with pytest.raises(ValueError, match=r"outside \[0, 7\]"):
        parse_layers("3-9", 8)
    with pytest.raises(ValueError, match="bad layer range"):
        parse_layers("a-b", 8)
    with pytest.raises(ValueError, match=r"component must be an int in \[0, 1\]"):
        gs.direction(2)


# ----------------------------------------------------------------------------------------------------------
# Editability metrics.

def test_path_points():
    ts, mid = path_points(5)
    assert [round(t, 6) for t in ts.tolist()] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.5] and mid == 6
    ts, mid = path_points(4)
    assert len(ts) == 5 and ts[mid] == 0.5


def test_editability_metrics_finite_deterministic_batch_independent(G_base, lpips):
    G = G_base
    lat = G.mapping(G.z_from_seeds([0, 1, 2])).detach()
    det = PixelFeatures()
    ref = compute_feature_stats([images_to_uint8(G(G.z_from_seeds(range(100, 108))))], det)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample FID warning
        r1 = editability_metrics(G, lat, "w", ref, detector=det, lpips=lpips, batch_size=1, fingerprint="fp")
        r3 = editability_metrics(G, lat, "w", ref, detector=det, lpips=lpips, batch_size=3, fingerprint="fp")
    assert r1.num_pairs == 3 and r1.pairs == ((0, 1), (0, 2), (1, 2))
    assert math.isfinite(r1.fid) and math.isfinite(r1.ppl) and r1.ppl > 0 and r1.fid > 0
    assert r1.path_lengths.dtype == torch.float64 and r1.path_lengths.shape == (3,)
    np.testing.assert_allclose(r3.fid, r1.fid, rtol=1e-5)
    np.testing.assert_allclose(r3.path_lengths.numpy(), r1.path_lengths.numpy(), rtol=1e-5)
    d = r1.to_dict()
    assert d["num_pairs"] == 3 and d["num_segments"] == 5 and d["fingerprint"] == "fp"

    # Parity: the pair (0, 2) measured by hand, image by image.
    ts = torch.linspace(0, 1, 6)
    with torch.no_grad():
        imgs = torch.cat([G.synthesis(lat[:1] + t * (lat[2:3] - lat[:1]), "w") for t in ts]).clamp(-1, 1)
        by_hand = float(lpips(imgs[:-1], imgs[1:]).double().sum())
        mids = torch.cat([G.synthesis((lat[i:i + 1] + lat[j:j + 1]) / 2, "w") for i, j in r1.pairs]).clamp(-1, 1)
    np.testing.assert_allclose(float(r1.path_lengths[1]), by_hand, rtol=1e-4)
    fake = FeatureStats(16, feature_net_sha256=det.sha256)
    fake.append(det(images_to_uint8(mids)).numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(r1.fid, fid_from_stats(ref, fake).fid, rtol=1e-5)


def test_editability_metrics_max_pairs_and_errors(G_base, lpips):
    G = G_base
    lat = G.mapping(G.z_from_seeds([0, 1, 2, 3])).detach()
    det = PixelFeatures()
    ref = compute_feature_stats([images_to_uint8(G(G.z_from_seeds(range(100, 104))))], det)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = editability_metrics(G, lat, "w", ref, detector=det, lpips=lpips, max_pairs=2, num_segments=2,
                                progress=seen.append)
    assert r.num_pairs == 2 and seen[-1].pairs_done == 2 and seen[-1].pairs_total == 2
    with pytest.raises(ValueError, match="at least 2 latents"):
        editability_metrics(G, lat[:1], "w", ref, detector=det, lpips=lpips)
    with pytest.raises(ValueError, match=r"shape \[N, 64\]"):
        editability_metrics(G, lat[:, :10], "w", ref, detector=det, lpips=lpips)


# ----------------------------------------------------------------------------------------------------------
# Non-injectivity.

def test_non_injectivity_two_random_solutions(G_over, lpips):
    G = G_over
    with torch.no_grad():
        target = G(G.z_from_seeds([42])).clamp(-1, 1)
    res = non_injectivity(G, target, "W", steps=1, num_points=4, seed=7, lpips=lpips)
    assert res.seeds.tolist() == [[7, 8]]
    assert res.images.shape == (1, 4, 1, 32, 32) and res.lpips_to_target.shape == (1, 4)
    assert res.lpips_consecutive.shape == (1, 3) and res.lpips_a_b.shape == (1,)
    assert not torch.allclose(res.latents_a, res.latents_b)  # two different inits give two solutions
    with torch.no_grad():
        end_a = G.synthesis(res.latents_a, "W").clamp(-1, 1)
    torch.testing.assert_close(res.images[0, 0], end_a[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(res.lpips_to_target[0, 0], lpips(end_a, target)[0], rtol=1e-4, atol=1e-6)
    s = res.summary()
    assert s["num_targets"] == 1 and len(s["per_target"][0]["lpips_to_target"]) == 4
    assert all(math.isfinite(s[k]) for k in ("endpoint_lpips", "path_lpips_max", "path_length", "lpips_a_b"))
    calls = {}

    def fake_invert(G_, targets, space, **kw):  # records what the projector is asked for
        from types import SimpleNamespace

        calls.update(kw, n=len(targets))
        return SimpleNamespace(latents=G_.w_avg.expand(len(targets), *G_.latent_shape(space)).clone(),
                               fingerprint="fp")

    out = non_injectivity(G, target.repeat(2, 1, 1, 1), "W", steps=5, num_points=2, seed=3, lpips=lpips,
                          invert_fn=fake_invert)
    assert calls["init"] == "random" and calls["reg_strength"] == 1.0 and calls["reg_until"] == 0.0  # fig. 11
    assert calls["seed"] == [3, 5, 4, 6] and calls["n"] == 4 and calls["steps"] == 5
    assert out.seeds.tolist() == [[3, 4], [5, 6]] and float(out.lpips_a_b.abs().max()) == 0


def test_reference_batches_accept_a_built_dataset(tmp_path):
    """`interpolate metrics --reference data/fmnist32` (an `opstylegan dataset` folder) reads its images as is."""
    from opstylegan.data import build_dataset, write_idx
    from opstylegan.editing.editability import reference_batches

    pixels = (np.random.default_rng(0).random((5, 32, 32)) * 255).astype(np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", pixels)
    build_dataset(tmp_path / "t10k-images-idx3-ubyte", tmp_path / "ds", resolution=32, channels=1, fit="pad")
    batches = list(reference_batches(tmp_path / "ds", resolution=32, channels=1, batch_size=2, max_items=4))
    assert [b.shape[0] for b in batches] == [2, 2]
    assert torch.equal(torch.cat(batches)[:, 0], torch.from_numpy(pixels[:4]))
    with pytest.raises(ValueError, match="has 1-channel 32x32 images; the model makes 3-channel 32x32"):
        list(reference_batches(tmp_path / "ds", resolution=32, channels=3))
