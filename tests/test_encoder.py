"""The encoder: shapes (W with R rows, w+ with one vector per layer), the head's size, training steps, exact
resume, refusals of foreign models, the projector's encoder init, and save/load round trips (tiny models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny

from opstylegan import Generator
from opstylegan.data import build_dataset, write_idx
from opstylegan.encoder import (
    ENCODER_DIR,
    Encoder,
    EncoderConfig,
    EncoderMismatchError,
    EncoderTrainConfig,
    EncoderTrainer,
    LatentPrior,
    ReferenceMismatch,
    check_encoder,
    check_reference,
    encode,
    load_encoder,
    mapping_statistics,
    model_encoder_path,
    train_encoder,
    write_reference,
)
from opstylegan.inversion import invert
from opstylegan.io.checkpoint import CheckpointError
from opstylegan.latent import LatentError
from opstylegan.metrics.lpips import LPIPS
from opstylegan.pretrained import SHIPPED, shipped_model_path
from opstylegan.training.state import StateError


@pytest.fixture(scope="module")
def lpips():
    return LPIPS("vgg")


@pytest.fixture(scope="module")
def alex():
    """The training loss's LPIPS (the encoder trainer's default)."""
    return LPIPS("alex", resize_to=256)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny 16 px generators saved to folders (so they carry a source folder, as loaded models do)."""
    root = tmp_path_factory.mktemp("enc-models")
    torch.manual_seed(1)
    out = {}
    for name, op in (("op", True), ("base", False)):
        Generator(tiny(op, res=16)).save_pretrained(root / name)
        out[name] = Generator.from_pretrained(root / name)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc-data")
    rng = np.random.default_rng(5)
    write_idx(root / "train-images-idx3-ubyte", (rng.random((24, 16, 16)) * 255).astype(np.uint8))
    build_dataset(root / "train-images-idx3-ubyte", root / "set16", resolution=16, channels=1)
    return root / "set16"


def images_of(G, seeds):
    with torch.no_grad():
        return G(G.z_from_seeds(seeds)).clamp(-1, 1)


@pytest.mark.parametrize("name,space", [("op", "W"), ("op", "w+"), ("base", "w+")])
def test_shapes_for_matrices_and_vectors_per_layer(models, name, space):
    G = models[name]
    E = Encoder.for_generator(G, space=space)
    assert E.space == space and E.cfg.generator_fingerprint == G.fingerprint()
    rows = G.rows if space == "W" else G.num_ws
    for n in (1, 3):
        x = images_of(G, range(n))
        out = encode(E, x)
        assert out.shape == (n, *G.latent_shape(space)) == (n, rows, G.cfg.w_dim) and out.dtype == torch.float32
        G.synthesis(out, space)  # a latent G accepts in that space
    x = images_of(G, range(5))
    torch.testing.assert_close(encode(E, x, batch_size=2), encode(E, x), rtol=0, atol=1e-6)  # chunking is free


def test_untrained_encoder_answers_near_w_avg_in_units_of_the_spread(models):
    G = models["op"]
    stats = mapping_statistics(G, num_rows=4096)
    E = Encoder.for_generator(G, stats=stats)
    torch.testing.assert_close(E.w_avg, G.w_avg)
    torch.testing.assert_close(E.w_std, stats.std)
    z = ((encode(E, images_of(G, range(4))) - E.w_avg) / E.w_std)
    assert 0 < float(z.abs().mean()) < 1  # offsets start small (coefficients scaled by 0.1)


def test_the_paper_sized_encoder_has_no_rows_times_features_dense_layer():
    E = Encoder(EncoderConfig())  # 256 px, 3 channels, R = 512, C = 512: the paper's configuration
    total = sum(p.numel() for p in E.parameters())
    assert total == 38_446_144 and total < 50_000_000  # the figure docs/ENCODER.md states
    biggest = max(p.numel() for p in E.parameters())
    assert biggest < 512 * 512 * 512 // 8  # a dense F -> R x C head would hold 134M weights
    assert Encoder(EncoderConfig(space="w+", num_rows=14))(torch.zeros(1, 3, 256, 256)).shape == (1, 14, 512)


def test_bad_configs_are_refused_with_the_key_named(models):
    from opstylegan.config import ConfigError

    with pytest.raises(ConfigError, match="space must be one of"):
        EncoderConfig(space="W+")
    with pytest.raises(ConfigError, match="num_basis must be an int >= 1"):
        EncoderConfig(num_basis=0)
    with pytest.raises(LatentError, match="needs an overparameterized model"):
        Encoder.for_generator(models["base"], space="W")
    with pytest.raises(ConfigError, match="unknown key"):
        EncoderTrainConfig.from_dict({"modle": "x"})
    with pytest.raises(ConfigError, match="all 0"):
        EncoderTrainConfig(latent_weight=0, lpips_weight=0, mse_weight=0)


def test_prior_is_zero_for_the_mappings_rows_and_grows_outside(models):
    G = models["op"]
    prior = LatentPrior(mapping_statistics(G, num_rows=8192)).calibrate(G)
    with torch.no_grad():
        W = G.mapping(G.z_from_seeds(range(64)))  # [64, R, C]: fresh rows of the mapping
    assert float(prior(W).mean()) < 0.02 * float(prior.threshold)  # ~1% of rows beyond the 99th percentile
    far = G.w_avg + 4 * (W - G.w_avg)
    assert float(prior(far).min()) > float(prior.threshold)
    assert float(prior(G.w_avg.expand_as(W)).max()) == 0  # the mean itself is not penalised


def test_training_steps_teach_the_encoder_and_leave_g_alone(models, data, alex):
    G = models["op"]
    before = G.fingerprint()
    cfg = EncoderTrainConfig(model="op", data=str(data), batch=4, lr=0.003, seed=3)
    trainer = EncoderTrainer(cfg, G, lpips=alex)
    assert trainer.cfg.space == "W" and trainer.cfg.generator_fingerprint == before
    reals = torch.from_numpy(np.stack([trainer.dataset[i].numpy() for i in range(4)])).float() / 127.5 - 1
    w0 = trainer.E.basis.weight.detach().clone()
    z_state = trainer.gen.get_state()
    first = trainer.train_step(reals)
    assert set(first) == {"latent", "lpips", "mse", "reg", "lpips_real", "total"}
    assert all(np.isfinite(v) for v in first.values())
    assert not torch.equal(trainer.E.basis.weight, w0)
    for _ in range(7):
        trainer.gen.set_state(z_state)  # the same generated pairs too: one fixed objective
        last = trainer.train_step(reals)
    assert last["total"] < 0.97 * first["total"]
    assert G.fingerprint() == before and all(p.grad is None for p in G.parameters())
    assert trainer.cur_nimg == 32 and trainer.step == 8


def test_run_folder_and_exact_resume(models, data, alex, tmp_path):
    cfg = EncoderTrainConfig(model=models["op"].source, data=str(data), kimg=0.016, batch=4, tick_kimg=0.008,
                             snap=1, seed=2)
    full = train_encoder(cfg, outdir=tmp_path / "a", lpips=alex)
    run = full.run_dir
    assert run.name == "00000-set16_encoder-overparam"
    for f in ("config.json", "stats.jsonl", "latest.json", "encoder-000000.016", "encoder-latest",
              "recon-000000.008.png", "state-000000.016.pt", "state-000000.008.pt"):
        assert (run / f).exists(), f
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [s["kimg"] for s in stats] == [0.008, 0.016]
    saved = json.loads((run / "config.json").read_text())
    assert saved["generator_fingerprint"] == models["op"].fingerprint() and saved["space"] == "W"

    half = train_encoder(cfg.replace(kimg=0.008), outdir=tmp_path / "b", lpips=alex)
    resumed = train_encoder(resume=half.run_dir, kimg=0.016, lpips=alex)
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "state-000000.008.pt"
    a = Encoder.from_pretrained(run / "encoder-latest")
    b = Encoder.from_pretrained(half.run_dir / "encoder-latest")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k  # bit-exact: same weights, Adam state, z stream and data order
    stats_b = [json.loads(line) for line in (half.run_dir / "stats.jsonl").read_text().splitlines()]
    assert [s["loss"] for s in stats_b] == [s["loss"] for s in stats]


def test_resume_refuses_a_changed_model_and_a_foreign_state(models, data, alex, tmp_path):
    root = tmp_path / "m"
    Generator(tiny(True, res=16)).save_pretrained(root)
    cfg = EncoderTrainConfig(model=str(root), data=str(data), kimg=0.004, batch=4, tick_kimg=0.004, snap=1)
    res = train_encoder(cfg, outdir=tmp_path / "runs", lpips=alex)
    torch.manual_seed(99)
    Generator(tiny(True, res=16)).save_pretrained(root)  # the model is retrained / replaced
    with pytest.raises(StateError, match="weights changed since the run started"):
        train_encoder(resume=res.run_dir, kimg=0.008, lpips=alex)
    trainer = EncoderTrainer(cfg, models["op"], lpips=alex)
    with pytest.raises(StateError, match="not an encoder training state"):
        trainer.load_state_dict({"config": {}})


def test_data_of_another_size_is_refused_before_training(models, tmp_path, alex):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "x-images-idx3-ubyte", (rng.random((4, 32, 32)) * 255).astype(np.uint8))
    build_dataset(tmp_path / "x-images-idx3-ubyte", tmp_path / "set32", resolution=32, channels=1)
    with pytest.raises(ValueError, match="1-channel 32px images; the model makes 1-channel 16px"):
        EncoderTrainer(EncoderTrainConfig(model="op", data=str(tmp_path / "set32")), models["op"], lpips=alex)


def test_round_trip_and_refusal_of_a_foreign_model(models, tmp_path):
    G = models["op"]
    E = Encoder.for_generator(G)
    x = images_of(G, [0, 1])
    E.save_pretrained(tmp_path / "enc")
    E2 = load_encoder(tmp_path / "enc", G)
    assert E2.cfg == E.cfg and torch.equal(encode(E2, x), encode(E, x))
    other = Generator(tiny(True, res=16))
    with pytest.raises(EncoderMismatchError, match="trained for another model"):
        load_encoder(tmp_path / "enc", other)
    with pytest.raises(EncoderMismatchError, match="trained for another model"):
        check_encoder(E, other)
    with pytest.raises(CheckpointError, match="holds a Generator, not a Encoder"):
        load_encoder(G.source)
    torch.save(E.state_dict(), tmp_path / "enc.pt")
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_encoder(tmp_path / "enc.pt")


def test_invert_from_the_encoder(models, lpips):
    G = models["op"]
    torch.manual_seed(4)
    E = Encoder.for_generator(G)
    x = images_of(G, [7, 8])
    alone = invert(G, x, init="encoder", encoder=E, steps=0, lpips=lpips)
    torch.testing.assert_close(alone.latents, encode(E, x), rtol=0, atol=0)  # steps 0: the encoder's answer
    assert alone.lpips_per_step.shape == (0, 2) and alone.options.reg_toward == "init"
    torch.testing.assert_close(alone.lpips, lpips(G.synthesis(encode(E, x)).clamp(-1, 1), x))
    refined = invert(G, x, init="encoder", encoder=E, steps=6, lpips=lpips)
    torch.testing.assert_close(refined.lpips_per_step[0], alone.lpips)  # step 0 measures the starting point
    assert bool((refined.lpips < alone.lpips).all())
    # The pull goes toward the start: at full strength throughout (reg_strength 0), every step starts from the
    # anchor, so the result is the anchor plus one Adam step (|step| <= ~lr): the encoder's answer, not w_avg.
    with torch.no_grad():
        E.coefficients.bias.normal_(0, 10.0)  # a prediction far from w_avg
    far = encode(E, x)
    assert float((far - G.w_avg).abs().max()) > 0.5
    held = invert(G, x, init="encoder", encoder=E, steps=3, reg_strength=0.0, reg_until=1.0, lpips=lpips)
    held_avg = invert(G, x, init="encoder", encoder=E, steps=3, reg_strength=0.0, reg_until=1.0,
                      reg_toward="w_avg", lpips=lpips)
    assert float((held.latents - far).abs().max()) < 0.051
    assert float((held_avg.latents - G.w_avg).abs().max()) < 0.051
    wplus = invert(G, x, "W+", init="encoder", encoder=E, steps=0, lpips=lpips)
    torch.testing.assert_close(wplus.latents, far[:, None].expand(2, G.num_ws, *far.shape[1:]))
    with pytest.raises(LatentError, match="cannot start an inversion in 'w\\+'"):
        invert(G, x, "w+", init="encoder", encoder=E, steps=1, lpips=lpips)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        invert(G, x, steps=0, lpips=lpips)
    with pytest.raises(ValueError, match="only used with init='encoder'"):
        invert(G, x, encoder=E, steps=1, lpips=lpips)
    with pytest.raises(EncoderMismatchError):
        invert(models["base"], x, init="encoder", encoder=Encoder.for_generator(models["op"], space="w+"), steps=0,
               lpips=lpips)


def test_the_encoder_in_the_model_folder_is_found(models, tmp_path, lpips):
    G0 = models["base"]
    G0.save_pretrained(tmp_path / "model")
    G = Generator.from_pretrained(tmp_path / "model")
    x = images_of(G, [3])
    with pytest.raises(FileNotFoundError, match="ships no encoder"):
        invert(G, x, init="encoder", steps=0, lpips=lpips)
    E = Encoder.for_generator(G)
    E.save_pretrained(tmp_path / "model" / ENCODER_DIR)
    assert model_encoder_path(tmp_path / "model") == tmp_path / "model" / "encoder"
    res = invert(G, x, init="encoder", steps=0, lpips=lpips)
    assert res.options.encoder == str(tmp_path / "model" / "encoder")
    torch.testing.assert_close(res.latents, encode(E, x), rtol=0, atol=0)


def test_reference_outputs_catch_a_changed_encoder_or_generator(models, tmp_path):
    G = models["op"]
    E = Encoder.for_generator(G)
    E.save_pretrained(tmp_path / "enc")
    ref = write_reference(tmp_path / "enc", E, G)
    assert check_reference(tmp_path / "enc", G) <= 1e-6  # 6 decimals stored
    with pytest.raises(ReferenceMismatch, match="not the one the reference was written with"):
        check_reference(tmp_path / "enc", Generator(tiny(True, res=16)))
    saved = ref.read_text()
    with torch.no_grad():
        E.fc.bias.add_(1e-3)
    E.save_pretrained(tmp_path / "enc")  # replaces the folder: put the old reference back
    ref.write_text(saved)
    with pytest.raises(ReferenceMismatch, match="weights or config changed"):
        check_reference(tmp_path / "enc", G)


SHIPPED_ENCODERS = [n for n in SHIPPED if (shipped_model_path(n) / ENCODER_DIR / "config.json").is_file()]


@pytest.mark.parametrize("name", SHIPPED_ENCODERS)
def test_shipped_encoders_reproduce_their_reference(name):
    path = shipped_model_path(name)
    G = Generator.from_pretrained(path)
    assert check_reference(model_encoder_path(path), G) <= 1e-4
    assert (path / ENCODER_DIR / "MODEL_CARD.md").is_file()
