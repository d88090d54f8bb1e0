"""NVIDIA StyleGAN2 pickles -> opstylegan models: parity with NVIDIA's own outputs, and no code ever executed.

The pickles and reference outputs in tests/data/stylegan-pickles were made by NVIDIA's code (README there).
"""

import dataclasses
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from opstylegan import Generator
from opstylegan.cli.main import cli
from opstylegan.config import GeneratorConfig
from opstylegan.io import nvidia
from opstylegan.io.nvidia import NvidiaPickleError, PersistentObject, convert_pickle, load_network_pickle
from opstylegan.models.discriminator import Discriminator

DATA = Path(__file__).parent / "data" / "stylegan-pickles"
FLAVOURS = ["nvlabs-ada", "nvlabs-sg3-stylegan2"]
PKL = "network-snapshot-000000.pkl"


def refs(flavour):
    return load_file(DATA / flavour / "reference-outputs.safetensors")


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_generator_reproduces_nvidia_const_noise(tmp_path, flavour):
    ref = refs(flavour)
    G = Generator.from_pretrained(convert_pickle(DATA / flavour / PKL, tmp_path / "G"))
    assert G.cfg.const_noise and G.cfg.mapping_layers == (8 if flavour == "nvlabs-ada" else 2)
    with torch.no_grad():
        w = G.mapping(ref["z"])  # [4, 32]; NVIDIA broadcasts it to every layer
        assert (w[:, None] - ref["ws"]).abs().max() < 1e-5
        assert (G.synthesis(w) - ref["img_const"]).abs().max() < 1e-4
        w07 = G.mapping(ref["z"], truncation_psi=0.7)
        assert (w07[:, None] - ref["ws_trunc07"]).abs().max() < 1e-5
        assert (G.synthesis(w07) - ref["img_trunc07_const"]).abs().max() < 1e-4
        # The same images through the w+ path (the latent NVIDIA's projector optimises).
        assert (G.synthesis(ref["ws"], "w+") - ref["img_const"]).abs().max() < 1e-4
    assert (ref["img_const"] - ref["img_none"]).abs().max() > 0.05  # the noise matters: the test can fail


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_generator_without_noise_and_discriminator(tmp_path, flavour):
    ref = refs(flavour)
    G = Generator.from_pretrained(convert_pickle(DATA / flavour / PKL, tmp_path / "G", noise="none"))
    assert not G.cfg.const_noise and "noise_const" not in str(list(G.state_dict()))
    D = Discriminator.from_pretrained(convert_pickle(DATA / flavour / PKL, tmp_path / "D", which="D"))
    with torch.no_grad():
        assert (G(ref["z"]) - ref["img_none"]).abs().max() < 1e-4
        assert (D(ref["img_const"]) - ref["d_logits"]).abs().max() < 1e-4
    # G and G_ema are different networks in these pickles: --which picks the right one.
    G_train = nvidia.convert_generator(load_network_pickle(DATA / flavour / PKL)["G"])
    with torch.no_grad():
        assert (G_train(ref["z"]) - ref["img_const"]).abs().max() > 1e-3


def test_conv0_flip_is_needed():
    """Without the spatial flip of the up-sampling kernels the images are wrong (the flip is not a no-op)."""
    ref = refs("nvlabs-ada")
    G = nvidia.convert_generator(load_network_pickle(DATA / "nvlabs-ada" / PKL)["G_ema"])
    with torch.no_grad():
        for block in G._synthesis.blocks[1:]:
            block.conv0.weight.copy_(block.conv0.weight.flip([2, 3]))
        assert (G(ref["z"]) - ref["img_const"]).abs().max() > 1e-2


def test_overparam_with_noise_equals_baseline_for_equal_rows(tmp_path):
    G = Generator.from_pretrained(convert_pickle(DATA / "nvlabs-ada" / PKL, tmp_path / "G"))
    Go = Generator(G.cfg.replace(overparam=True)).eval()
    Go.load_state_dict(G.state_dict())
    w = G.mapping(refs("nvlabs-ada")["z"])
    with torch.no_grad():
        assert (Go.synthesis(w[:, None].expand(-1, Go.rows, -1), "W") - G.synthesis(w)).abs().max() < 1e-5


def test_project_models_have_no_noise_and_unchanged_config():
    cfg = GeneratorConfig()
    assert "const_noise" not in cfg.to_dict()  # configs and fingerprints of existing models stay as they were
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg
    assert not any("noise" in k for k in Generator(cfg.replace(img_resolution=32, channel_base=512,
                                                               channel_max=32)).state_dict())
    on = cfg.replace(const_noise=True)
    assert on.to_dict()["const_noise"] is True and GeneratorConfig.from_dict(on.to_dict()) == on


# -- safety -------------------------------------------------------------------------------------------------

def _nvidia_style_dumper(monkeypatch):
    """A pickler that writes PersistentObjects the way NVIDIA's persistence module does (a call of
    torch_utils.persistence._reconstruct_persistent_obj(meta) carrying the module source)."""
    def _reconstruct_persistent_obj(meta):
        raise AssertionError("never called by the reader")

    persistence = types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util", "__qualname__": "EasyDict"})
    util.EasyDict = EasyDict
    for name, mod in [("torch_utils", types.ModuleType("torch_utils")), ("torch_utils.persistence", persistence),
                      ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", util)]:
        monkeypatch.setitem(sys.modules, name, mod)

    def dump(data, path, source):
        class Pickler(pickle.Pickler):
            def reducer_override(self, obj):
                if isinstance(obj, PersistentObject):
                    meta = dict(type="class", version=obj.version, module_src=source, class_name=obj.class_name,
                                state=obj.state)
                    return _reconstruct_persistent_obj, (meta,)
                if type(obj) is nvidia.EasyDict:
                    return EasyDict, (), None, None, iter(obj.items())
                return NotImplemented

        with open(path, "wb") as f:
            Pickler(f, protocol=4).dump(data)

    return dump


def test_embedded_source_is_never_executed(tmp_path, monkeypatch):
    marker = tmp_path / "pwned.txt"
    payload = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('code from the pickle ran')\n"
    data = load_network_pickle(DATA / "nvlabs-ada" / PKL)
    evil = tmp_path / "evil.pkl"
    _nvidia_style_dumper(monkeypatch)(data, evil, payload)
    assert payload.encode() in evil.read_bytes()

    G = Generator.from_pretrained(convert_pickle(evil, tmp_path / "G"))
    with torch.no_grad():
        assert (G(refs("nvlabs-ada")["z"]) - refs("nvlabs-ada")["img_const"]).abs().max() < 1e-4
    assert not marker.exists()
    # Control: the payload does write the file when it is executed, as NVIDIA's loader would do.
    exec(compile(payload, "module_src", "exec"), {})  # noqa: S102
    assert marker.exists()


@pytest.mark.parametrize("blob,name", [
    (b"\x80\x02cos\nsystem\nX\x05\x00\x00\x00touch\x85R.", "os.system"),
    (b"\x80\x02cposix\nsystem\nX\x05\x00\x00\x00touch\x85R.", "posix.system"),
    (pickle.dumps(eval, protocol=4), "builtins.eval"),
    (b"\x80\x02cbuiltins\ngetattr\n.", "builtins.getattr"),
    (b"\x80\x02ctorch\nload\n.", "torch.load"),
    (b"\x80\x02cdnnlib.tflib.network\nNetwork\n.", "TensorFlow"),
])
def test_foreign_globals_are_refused_by_name(tmp_path, blob, name):
    p = tmp_path / "foreign.pkl"
    p.write_bytes(blob)
    with pytest.raises(NvidiaPickleError, match=name.replace(".", r"\.")):
        load_network_pickle(p)


def test_foreign_global_inside_a_network_is_refused(tmp_path, monkeypatch):
    data = load_network_pickle(DATA / "nvlabs-ada" / PKL)
    g = data["G_ema"]
    data["G_ema"] = dataclasses.replace(g, state={**g.state, "hook": eval})
    _nvidia_style_dumper(monkeypatch)(data, tmp_path / "x.pkl", "")
    with pytest.raises(NvidiaPickleError, match=r"builtins\.eval"):
        convert_pickle(tmp_path / "x.pkl", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind,msg", [
    ("truncated", "truncated"),
    ("text", "not a pickle"),
    ("empty", "not a pickle"),
    ("zip", "zip archive"),
])
def test_unreadable_files_get_clear_messages(tmp_path, kind, msg):
    src = (DATA / "nvlabs-ada" / PKL).read_bytes()
    blob = {"truncated": src[: len(src) // 2], "text": b"hello, not a network\n", "empty": b"",
            "zip": b"PK\x03\x04" + bytes(60)}[kind]
    p = tmp_path / "bad.pkl"
    p.write_bytes(blob)
    with pytest.raises(NvidiaPickleError, match=msg):
        convert_pickle(p, tmp_path / "out")
    r = CliRunner().invoke(cli, ["convert", str(p), str(tmp_path / "out2")])
    assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_conditional_and_stylegan3_networks_are_refused():
    data = load_network_pickle(DATA / "nvlabs-ada" / PKL)
    g = data["G_ema"]
    with pytest.raises(NvidiaPickleError, match="conditional"):
        nvidia.convert_generator(dataclasses.replace(g, state={**g.state, "c_dim": 10}))
    syn = g.child("synthesis")
    sg3 = dataclasses.replace(syn, state={**syn.state, "_modules": {"L0_36_512": syn.child("b4")}})
    with pytest.raises(NvidiaPickleError, match="StyleGAN3"):
        nvidia.convert_generator(dataclasses.replace(g, state={**g.state, "_modules": {**g.children(),
                                                                                         "synthesis": sg3}}))
    d = data["D"]
    with pytest.raises(NvidiaPickleError, match="conditional"):
        nvidia.convert_discriminator(dataclasses.replace(d, state={**d.state, "c_dim": 10}))


def test_cli_convert_then_generate(tmp_path):
    r = run("convert", DATA / "nvlabs-sg3-stylegan2" / PKL, tmp_path / "m")
    assert r.exit_code == 0, r.output
    assert "2 mapping layers" in r.output and "noise const" in r.output
    r = run("generate", "--model", tmp_path / "m", "--seeds", "0-1", "--outdir", tmp_path / "gen", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "gen" / "seed0001.png").exists()
    r = CliRunner().invoke(cli, ["convert", str(DATA / "nvlabs-sg3-stylegan2" / PKL), str(tmp_path / "m")])
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = CliRunner().invoke(cli, ["convert", str(DATA / "nvlabs-sg3-stylegan2" / PKL), str(tmp_path / "d"),
                                 "--which", "D", "--noise", "none"])
    assert r.exit_code == 2 and "generators only" in r.output
