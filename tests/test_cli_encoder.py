"""`opstylegan encoder train` and `opstylegan invert --init encoder` end to end (tiny 16 px model, CPU)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny
from PIL import Image

from opstylegan import Generator
from opstylegan.cli.main import cli
from opstylegan.data import build_dataset, write_idx
from opstylegan.encoder import Encoder, encode
from opstylegan.inversion import load_latent
from opstylegan.inversion.runs import load_target


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-enc")
    torch.manual_seed(6)
    G = Generator(tiny(True, res=16))
    G.save_pretrained(root / "model")
    Generator(tiny(True, res=16)).save_pretrained(root / "other")
    rng = np.random.default_rng(1)
    write_idx(root / "train-images-idx3-ubyte", (rng.random((16, 16, 16)) * 255).astype(np.uint8))
    build_dataset(root / "train-images-idx3-ubyte", root / "set16", resolution=16, channels=1)
    (root / "imgs").mkdir()
    with torch.no_grad():
        images = ((G(G.z_from_seeds([0, 1])).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [2, 1, 16, 16]
    for i in range(2):
        Image.fromarray(images[i, 0].numpy(), "L").save(root / "imgs" / f"t{i}.png")
    return root


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


TRAIN = ["--batch", "4", "--tick", "0.008", "--snap", "1", "--device", "cpu"]


def test_train_resume_and_invert_from_the_encoder(setup):
    root = setup
    r = run("encoder", "train", "--model", root / "model", "--data", root / "set16", "--outdir", root / "runs",
            "--kimg", "0.008", *TRAIN)
    assert r.exit_code == 0, r.output
    run_dir = root / "runs" / "00000-set16_encoder-overparam"
    assert "done: " in r.output and (run_dir / "encoder-latest" / "model.safetensors").is_file()
    assert "tick 1 kimg 0.008" in (run_dir / "log.txt").read_text()

    r = run("encoder", "train", "--resume", run_dir, "--lr", "0.1")
    assert r.exit_code != 0 and "--lr cannot be changed" in r.output
    r = run("encoder", "train", "--resume", run_dir, "--kimg", "0.016", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "resuming from" in r.output and "state-000000.008.pt" in r.output
    assert len((run_dir / "stats.jsonl").read_text().splitlines()) == 2

    enc = run_dir / "encoder-latest"
    out = root / "inv0"
    r = run("invert", "--model", root / "model", "--images", root / "imgs", "--init", "encoder", "--encoder", enc,
            "--steps", 0, "--outdir", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["options"]["init"] == "encoder" and s["options"]["encoder"] == str(enc.resolve())
    assert s["options"]["reg_toward"] == "init" and s["options"]["steps"] == 0
    G = Generator.from_pretrained(root / "model")
    E = Encoder.from_pretrained(enc)
    from opstylegan.inversion.runs import collect_images

    items = collect_images([root / "imgs"])
    x = torch.cat([load_target(it, G) for it in items])
    expect = encode(E, x)
    for j, it in enumerate(items):
        got = load_latent(out / "W-matrix" / f"{it.stem}.safetensors", G).latent
        torch.testing.assert_close(got, expect[j], rtol=0, atol=0)  # --steps 0: the encoder's answer

    out2 = root / "inv3"
    r = run("invert", "--model", root / "model", "--images", root / "imgs", "--init", "encoder", "--encoder", enc,
            "--steps", 5, "--outdir", out2, "--device", "cpu")
    assert r.exit_code == 0, r.output
    s2 = json.loads((out2 / "summary.json").read_text())
    assert s2["results"]["W"]["lpips"]["median"] < s["results"]["W"]["lpips"]["median"]  # refined from the encoder


def test_shipped_encoder_lookup_and_refusals(setup, tmp_path):
    root = setup
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    common = ["--images", root / "imgs", "--steps", 0, "--device", "cpu"]
    r = run("invert", "--model", model, "--init", "encoder", "--outdir", tmp_path / "a", *common)
    assert r.exit_code != 0 and "ships no encoder" in r.output
    Encoder.for_generator(Generator.from_pretrained(model)).save_pretrained(model / "encoder")
    r = run("invert", "--model", model, "--init", "encoder", "--outdir", tmp_path / "b", *common)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["options"]["encoder"] == str(model / "encoder")

    r = run("invert", "--model", root / "other", "--init", "encoder", "--encoder", model / "encoder",
            "--outdir", tmp_path / "c", *common)
    assert r.exit_code != 0 and "trained for another model" in r.output
    assert not (tmp_path / "c" / "summary.json").exists()
    r = run("invert", "--model", model, "--init", "encoder", "--space", "w+", "--outdir", tmp_path / "d", *common)
    assert r.exit_code != 0 and "cannot start an inversion in 'w+'" in r.output
    r = run("invert", "--model", model, "--outdir", tmp_path / "e", *common)
    assert r.exit_code != 0 and "the encoder's answer alone, needs init='encoder'" in r.output
    r = run("invert", "--model", model, "--encoder", model / "encoder", "--outdir", tmp_path / "f", "--images",
            root / "imgs", "--steps", 1, "--device", "cpu")
    assert r.exit_code != 0 and "only used with init='encoder'" in r.output


def test_train_refuses_bad_input(setup, tmp_path):
    root = setup
    r = run("encoder", "train", "--model", root / "model", "--outdir", tmp_path)
    assert r.exit_code != 0 and "give --data" in r.output
    Generator(tiny(True, res=32)).save_pretrained(tmp_path / "m32")
    r = run("encoder", "train", "--model", tmp_path / "m32", "--data", root / "set16", "--outdir", tmp_path, *TRAIN)
    assert r.exit_code != 0 and "the model makes 1-channel 32px images" in r.output
    r = run("encoder", "train", "--model", root / "model", "--data", root / "set16", "--space", "w+",
            "--outdir", tmp_path, "--kimg", "0.004", "--num-basis", "0", *TRAIN)
    assert r.exit_code != 0 and "--num-basis" in r.output
