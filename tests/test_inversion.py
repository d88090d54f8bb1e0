"""The projector: batching equivalence, determinism, regularizer schedule, init, errors, latent files, sharding."""

import pytest
import torch
from conftest import tiny

from opstylegan import Generator
from opstylegan.inversion import (
    LatentFileError,
    initial_latents,
    invert,
    load_latent,
    lpips_quartiles,
    save_latent,
)
from opstylegan.inversion.runs import merge_partials, shard
from opstylegan.latent import LatentError
from opstylegan.metrics.lpips import LPIPS


@pytest.fixture(scope="module")
def lpips():
    return LPIPS("vgg")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(1)
    return {op: Generator(tiny(op, channels=3)).eval() for op in (False, True)}


def targets_of(G, seeds):
    with torch.no_grad():
        return G(G.z_from_seeds(seeds), truncation_psi=0.8).clamp(-1, 1)


def test_per_image_gradients_do_not_depend_on_the_batch(models, lpips):
    # The foundation of batching: d(sum of losses)/d(latent_i) is image i's own gradient.
    G = models[True].requires_grad_(False)
    tg = targets_of(G, [1, 2, 3])
    x0 = G.w_avg.expand(3, *G.latent_shape("W")).clone() + 0.1 * torch.randn(3, *G.latent_shape("W"))

    def grad(x, t):
        x = x.clone().requires_grad_(True)
        lpips.distance_from_features(lpips.features(G.synthesis(x, "W")), lpips.features(t)).sum().backward()
        return x.grad

    batched = grad(x0, tg)
    alone = torch.cat([grad(x0[i:i + 1], tg[i:i + 1]) for i in range(3)])
    assert batched.abs().max() > 1e-3
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5 * float(batched.abs().max()))  # float32 rounding


@pytest.mark.parametrize("overparam,space", [(True, "W"), (False, "w+")])
def test_batched_matches_one_by_one(models, lpips, overparam, space):
    G = models[overparam]
    tg = targets_of(G, [5, 6, 7])
    a = invert(G, tg, space, steps=4, lpips=lpips)
    b = invert(G, tg, space, steps=4, lpips=lpips, batch_size=1)
    # Float32 rounding of batched convolutions (~1e-7) is all that differs. Adam divides by sqrt(v), which
    # magnifies it in elements whose gradient is near Adam's eps, so latents agree relative to how far they
    # moved, and the LPIPS curves agree closely.
    torch.testing.assert_close(a.lpips_per_step, b.lpips_per_step, rtol=0, atol=2e-3)
    torch.testing.assert_close(a.lpips, b.lpips, rtol=0, atol=2e-3)
    moved = (a.latents - G.w_avg).flatten(1).norm(dim=1)
    assert bool((moved > 0.05).all())
    assert bool(((a.latents - b.latents).flatten(1).norm(dim=1) < 0.05 * moved).all())
    # Reordering the targets permutes the results: nothing is shared between images.
    c = invert(G, tg.flip(0), space, steps=4, lpips=lpips)
    torch.testing.assert_close(c.lpips_per_step.flip(1), a.lpips_per_step, rtol=0, atol=2e-3)


def test_deterministic_and_leaves_the_model_alone(models, lpips):
    G = models[True].requires_grad_(True)
    tg = targets_of(G, [8, 9])
    a = invert(G, tg, "W+", steps=3, lpips=lpips, init="random", seed=4)
    b = invert(G, tg, "W+", steps=3, lpips=lpips, init="random", seed=4)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.lpips_per_step, b.lpips_per_step)
    assert all(p.grad is None and p.requires_grad for p in G.parameters())


@pytest.mark.parametrize("overparam,space", [(False, "w"), (False, "w+"), (True, "w"), (True, "W"), (True, "W+")])
def test_result_shapes_and_lpips_goes_down(models, lpips, overparam, space):
    G = models[overparam]
    tg = targets_of(G, [11, 12])
    r = invert(G, tg, space, steps=8, lpips=lpips)
    assert r.latents.shape == (2, *G.latent_shape(space)) and r.images.shape == tg.shape
    assert r.lpips_per_step.shape == (8, 2) and r.space == space and r.fingerprint == G.fingerprint()
    assert bool((r.lpips < r.lpips_per_step[0] - 0.01).all())
    assert r.quartiles().shape == (8, 3)
    # The final figures describe the returned latents.
    torch.testing.assert_close(lpips(G.synthesis(r.latents, space).clamp(-1, 1), tg), r.lpips, atol=1e-5, rtol=0)


def test_regularizer_applies_exactly_to_the_first_fraction_of_steps(models, lpips):
    G = models[True]
    tg = targets_of(G, [3])
    r = invert(G, tg, "W", steps=10, reg_strength=1e-6, reg_until=0.5, lpips=lpips, record_trajectory=True)
    dev = (r.trajectory - G.w_avg).flatten(2).abs().amax(dim=2)[:, 0]  # [steps + 1]
    assert r.trajectory.shape == (11, 1, *G.latent_shape("W"))
    assert bool((dev[:5] < 1e-5).all())  # pulled to w_avg before steps 0..4
    assert bool((dev[5:] > 1e-2).all())  # free from step 5 on
    assert torch.equal(r.trajectory[-1], r.latents)
    free = invert(G, tg, "W", steps=10, reg_until=0.0, lpips=lpips, record_trajectory=True)
    assert float((free.trajectory[1] - G.w_avg).abs().max()) > 1e-2


def test_initial_latents(models):
    G = models[True]
    x = initial_latents(G, "W+", [0, 1])
    assert x.shape == (2, *G.latent_shape("W+")) and torch.equal(x, G.w_avg.expand_as(x))
    r = initial_latents(G, "W", [3, 4], init="random")
    assert torch.equal(r[1], initial_latents(G, "W", [4], init="random")[0])  # a seed's latent ignores the batch
    assert not torch.allclose(r[0], r[1]) and not torch.allclose(r[0, 0], r[0, 1])  # rows differ
    rp = initial_latents(G, "W+", [3], init="random")
    assert torch.equal(rp[0, 0], r[0]) and torch.equal(rp[0, -1], r[0])  # W -> W+ broadcast
    w = initial_latents(models[False], "w+", [3], init="random")
    assert torch.equal(w[0, 0], w[0, -1])


def test_errors_name_the_bad_value(models, lpips):
    Gb, G = models[False], models[True]
    tg = targets_of(G, [0])
    with pytest.raises(LatentError, match="needs an overparameterized model"):
        invert(Gb, tg, "W", steps=1, lpips=lpips)
    cases = [({"steps": 0}, "steps must be an int >= 1, got 0"), ({"lr": -0.1}, "lr must be a finite number > 0"),
             ({"betas": (0.9, 1.0)}, "betas must be two numbers"), ({"reg_strength": 1.5}, "reg_strength"),
             ({"reg_until": -1}, "reg_until"), ({"init": "zeros"}, "init must be one of"),
             ({"loss": "l1"}, "loss must be one of"), ({"seed": [1, 2]}, "one int >= 0 per target"),
             ({"autocast": torch.float64}, "autocast")]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            invert(G, tg, "W", lpips=lpips, **kw)
    with pytest.raises(LatentError, match="unknown latent space 'Z'"):
        invert(G, tg, "Z", lpips=lpips)
    with pytest.raises(ValueError, match=r"must have shape \[N, 3, 32, 32\]"):
        invert(G, tg[:, :, :16], "W", lpips=lpips)
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        invert(G, tg * 127.5 + 127.5, "W", lpips=lpips)


def test_latent_files_refuse_another_model(tmp_path, models):
    G, Gb = models[True], models[False]
    lat = torch.randn(*G.latent_shape("W"))
    save_latent(tmp_path / "a.safetensors", lat, space="W", fingerprint=G.fingerprint(), metadata={"steps": 7})
    got = load_latent(tmp_path / "a.safetensors", G)
    assert torch.equal(got.latent, lat) and got.space == "W" and got.metadata == {"steps": "7"}
    with pytest.raises(LatentFileError, match="inverted with another model"):
        load_latent(tmp_path / "a.safetensors", Gb)
    other = Generator(tiny(True, channels=3))  # same config, other weights
    with pytest.raises(LatentFileError, match="another model"):
        load_latent(tmp_path / "a.safetensors", other)
    save_latent(tmp_path / "b.safetensors", lat[:3], space="W", fingerprint=G.fingerprint())
    with pytest.raises(LatentFileError, match=r"this model expects \[32, 64\]"):
        load_latent(tmp_path / "b.safetensors", G)
    (tmp_path / "c.safetensors").write_bytes(b"junk")
    with pytest.raises(LatentFileError, match="not a readable"):
        load_latent(tmp_path / "c.safetensors")
    with pytest.raises(FileNotFoundError):
        load_latent(tmp_path / "missing.safetensors")


def test_sharding_is_disjoint_and_merge_ignores_world_size():
    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == [1, 4, 7, 10]
    with pytest.raises(ValueError, match="rank"):
        shard(items, 3, 3)

    def record(i):
        return {"index": i, "image": f"img{i}", "lpips": i / 10, "mse": 0.1, "psnr": 10.0 + i, "latent": "l",
                "reconstruction": "r", "pair": "p", "curve": [1.0, 0.5 + i / 100]}

    def partials(world):
        return [{"skipped": [], "results": {"W": [record(i) for i in shard(list(range(5)), r, world)]}}
                for r in range(world)]

    one, curves1, names1 = merge_partials(partials(1))
    three, curves3, names3 = merge_partials(partials(3))
    assert one == three and names1 == names3 == {"W": [f"img{i}" for i in range(5)]}
    assert torch.equal(curves1["W"], curves3["W"]) and curves1["W"].shape == (2, 5)
    assert one["W"]["lpips"]["median"] == pytest.approx(0.2) and one["W"]["lpips"]["q1"] == pytest.approx(0.1)


def test_lpips_quartiles_match_numpy():
    np = pytest.importorskip("numpy")
    x = torch.rand(4, 9)
    want = np.percentile(x.numpy(), [25, 50, 75], axis=1).T
    torch.testing.assert_close(lpips_quartiles(x), torch.from_numpy(want).float(), rtol=0, atol=1e-6)
