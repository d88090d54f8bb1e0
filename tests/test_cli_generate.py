"""`opstylegan generate` end to end (tiny models, CPU)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import tiny
from PIL import Image

from opstylegan import Generator
from opstylegan.cli.common import parse_seeds
from opstylegan.cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


def test_parse_seeds():
    assert parse_seeds("0-3,7, 9-9") == [0, 1, 2, 3, 7, 9]
    for bad, msg in [("", "empty"), ("3-1", "before the start"), ("a", "bad seed item"), ("-1", "bad seed item"),
                     ("0-99999999999", "out of range")]:
        with pytest.raises(ValueError, match=msg):
            parse_seeds(bad)


@pytest.mark.parametrize("overparam", [False, True])
def test_generate_from_model_is_batch_independent(tmp_path, overparam):
    G = Generator(tiny(overparam, channels=3))
    G.save_pretrained(tmp_path / "m")
    r1 = run("generate", "--model", tmp_path / "m", "--seeds", "3-5", "--trunc", 0.7, "--outdir", tmp_path / "a",
             "--batch", 3, "--grid")
    assert r1.exit_code == 0, r1.output
    r2 = run("generate", "--model", tmp_path / "m", "--seeds", "4", "--trunc", 0.7, "--outdir", tmp_path / "b",
             "--batch", 1)
    assert r2.exit_code == 0, r2.output
    a = np.asarray(Image.open(tmp_path / "a" / "seed0004.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "seed0004.png"))
    assert a.shape == (32, 32, 3)
    # Same seed, different batch: identical up to one level of 8-bit rounding.
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert (tmp_path / "a" / "grid.png").exists()
    meta = json.loads((tmp_path / "a" / "generate.json").read_text())
    assert meta["seeds"] == [3, 4, 5] and meta["fingerprint"] == G.fingerprint()


def test_generate_init_grayscale(tmp_path):
    r = run("generate", "--init", "tiny", "--overparam", "--channels", 1, "--seeds", "0-1", "--outdir", tmp_path)
    assert r.exit_code == 0, r.output
    assert np.asarray(Image.open(tmp_path / "seed0001.png")).shape == (32, 32)


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--init", "tiny", "--trunc", "3"], "3.0 is not in the range -1<=x<=2"),
        (["--init", "tiny", "--seeds", "5-2"], "before the start"),
        (["--init", "tiny", "--model", "fmnist32-baseline"], "either --model or --init PRESET, not both"),
        (["--model", "no/such/folder"], "neither a model folder nor a shipped model"),
        (["--model", "{pkl}"], "never unpickles"),
    ],
)
def test_generate_bad_input_writes_nothing(tmp_path, args, msg):
    pkl = tmp_path / "snap.pkl"
    pkl.write_bytes(b"\x80\x04junk")
    out = tmp_path / "out"
    args = [a.replace("{pkl}", str(pkl)) for a in args]
    r = CliRunner().invoke(cli, ["generate", *args, "--outdir", str(out)])
    assert r.exit_code != 0
    assert msg in r.output
    assert not out.exists()
