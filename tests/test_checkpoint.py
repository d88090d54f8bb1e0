"""save_pretrained / from_pretrained: bit-exact round trip and clear refusals of bad files."""

import json
import pickle

import pytest
import torch
from conftest import tiny, tiny_d

from opstylegan import Discriminator, Generator
from opstylegan.config import ConfigError
from opstylegan.io.checkpoint import CheckpointError


@pytest.mark.parametrize("overparam", [False, True])
def test_round_trip_bit_exact(tmp_path, overparam):
    G = Generator(tiny(overparam)).eval()
    with torch.no_grad():
        G._mapping.w_avg.normal_()
    G.save_pretrained(tmp_path / "g")
    H = Generator.from_pretrained(tmp_path / "g")
    for (k, a), (k2, b) in zip(G.state_dict().items(), H.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    assert H.cfg == G.cfg and H.fingerprint() == G.fingerprint()
    z = G.z_from_seeds([1, 2])
    with torch.no_grad():
        assert torch.equal(G(z), H(z))
    # Loading through the file names works too.
    assert Generator.from_pretrained(tmp_path / "g" / "config.json").cfg == G.cfg


def test_fp16_storage_and_discriminator(tmp_path):
    G = Generator(tiny(True))
    G.save_pretrained(tmp_path / "g16", dtype=torch.float16)
    H = Generator.from_pretrained(tmp_path / "g16")
    assert all(p.dtype == torch.float32 for p in H.parameters())
    assert (tmp_path / "g16" / "model.safetensors").stat().st_size < sum(
        p.numel() * 4 for p in G.state_dict().values()) * 0.6
    D = Discriminator(tiny_d())
    D.save_pretrained(tmp_path / "d")
    assert torch.equal(Discriminator.from_pretrained(tmp_path / "d").epilogue.out.weight, D.epilogue.out.weight)
    with pytest.raises(CheckpointError, match="holds a Discriminator, not a Generator"):
        Generator.from_pretrained(tmp_path / "d")


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path):
    G = Generator(tiny())
    G.save_pretrained(tmp_path / "g")
    G2 = Generator(tiny())
    G2.save_pretrained(tmp_path / "g")
    assert Generator.from_pretrained(tmp_path / "g").fingerprint() == G2.fingerprint()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]


def test_failed_save_keeps_previous(tmp_path, monkeypatch):
    G = Generator(tiny())
    G.save_pretrained(tmp_path / "g")
    import opstylegan.io.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "st_save", boom)
    with pytest.raises(OSError, match="disk full"):
        Generator(tiny()).save_pretrained(tmp_path / "g")
    assert Generator.from_pretrained(tmp_path / "g").fingerprint() == G.fingerprint()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]


def _saved(tmp_path):
    G = Generator(tiny())
    return G.save_pretrained(tmp_path / "g")


def test_truncated_weights(tmp_path):
    d = _saved(tmp_path)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated, corrupt or from another model"):
        Generator.from_pretrained(d)


def test_mismatched_weights(tmp_path):
    d = _saved(tmp_path)
    other = Generator(tiny(res=64)).save_pretrained(tmp_path / "o")
    # Swap in another model's weights and its hash: the strict load must name the mismatch.
    (d / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    meta = json.loads((d / "config.json").read_text())
    meta["weights_sha256"] = json.loads((other / "config.json").read_text())["weights_sha256"]
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit a Generator"):
        Generator.from_pretrained(d)


def test_bad_config(tmp_path):
    d = _saved(tmp_path)
    meta = json.loads((d / "config.json").read_text())
    meta["config"]["mapping_layerz"] = 3
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="unknown key"):
        Generator.from_pretrained(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Generator.from_pretrained(d)
    meta["config"].pop("mapping_layerz")
    meta["format_version"] = 99
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format_version 99"):
        Generator.from_pretrained(d)


def test_refuses_pickles(tmp_path):
    G = Generator(tiny())
    pkl = tmp_path / "network-snapshot.pkl"
    pkl.write_bytes(pickle.dumps({"G_ema": "anything"}))
    with pytest.raises(CheckpointError, match="never unpickles"):
        Generator.from_pretrained(pkl)
    pt = tmp_path / "model.bin"
    torch.save(G.state_dict(), pt)
    with pytest.raises(CheckpointError, match="never unpickles"):
        Generator.from_pretrained(pt)
    with pytest.raises(FileNotFoundError, match="model not found"):
        Generator.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        Generator.from_pretrained(tmp_path / "empty")


def test_written_files_get_usual_permissions(tmp_path):
    import os
    import stat

    d = Generator(tiny()).save_pretrained(tmp_path / "g")
    mask = os.umask(0)
    os.umask(mask)
    for f in (d / "config.json", d / "model.safetensors"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask
