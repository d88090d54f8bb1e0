"""Network sizes are validated before anything is built: a config.json asking for w_dim 1e8 is refused in words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny, tiny_d

from opstylegan.cli.main import cli
from opstylegan.config import MAX_PARAMETERS, ConfigError, DiscriminatorConfig, GeneratorConfig, preset
from opstylegan.models.discriminator import Discriminator
from opstylegan.models.generator import Generator


@pytest.mark.parametrize("cfg", [
    tiny(), tiny(True, res=16, channels=3), tiny(res=64, mapping_layers=4, const_noise=True),
    tiny(True, num_rows=40, w_dim=48, z_dim=24),
])
def test_generator_parameter_count_is_exact(cfg: GeneratorConfig) -> None:
    assert cfg.num_parameters() == sum(p.numel() for p in Generator(cfg).parameters())


@pytest.mark.parametrize("cfg", [tiny_d(), tiny_d(res=16, channels=3), tiny_d(res=64, mbstd_num_channels=3)])
def test_discriminator_parameter_count_is_exact(cfg: DiscriminatorConfig) -> None:
    assert cfg.num_parameters() == sum(p.numel() for p in Discriminator(cfg).parameters())


@pytest.mark.parametrize("changes, message", [
    ({"w_dim": 100_000_000}, r"w_dim must be an int in \[1, 65536\], got 100000000"),
    ({"w_dim": 1e8}, r"w_dim must be an int in \[1, 65536\], got 100000000.0"),
    ({"z_dim": True}, r"z_dim must be an int in \[1, 65536\], got True"),
    ({"mapping_layers": 10_000}, r"mapping_layers must be an int in \[1, 64\]"),
    ({"channel_max": 1 << 20}, r"channel_max must be an int in \[1, 65536\]"),
    ({"overparam": True, "num_rows": 1 << 20}, r"num_rows must be at most 65536"),
    ({"w_dim": 65536, "mapping_layers": 64}, r"w_dim=65536, mapping_layers=64.* give 2.71e\+11 parameters, more "
                                             r"than the 2.15e\+09 allowed \(1.08e\+03 GB in float32\)"),
    ({"img_resolution": 1024, "channel_base": 1 << 30, "channel_max": 65536},
     r"give .* parameters, more than the 2.15e\+09 allowed"),
])
def test_absurd_generator_sizes_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GeneratorConfig.from_dict({**tiny().to_dict(), **changes})


def test_absurd_discriminator_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="DiscriminatorConfig: channel_base=1073741824, channel_max=65536 at "
                                          "1024 px give"):
        DiscriminatorConfig(img_resolution=1024, channel_base=1 << 30, channel_max=65536)


def test_largest_real_networks_are_allowed() -> None:
    for res in (256, 1024):
        p = preset("auto", img_resolution=res, overparam=True)
        assert p.generator.num_parameters() < MAX_PARAMETERS / 50
        assert p.discriminator.num_parameters() < MAX_PARAMETERS / 50


def test_model_folder_with_huge_config_is_refused_cleanly(tmp_path: Path) -> None:
    Generator(tiny()).save_pretrained(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    d = json.loads(cfg_path.read_text())
    d["config"]["w_dim"] = 100_000_000
    cfg_path.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="w_dim must be an int in"):
        Generator.from_pretrained(tmp_path / "m")
    res = CliRunner().invoke(cli, ["generate", "--model", str(tmp_path / "m"), "--seeds", "0",
                                   "--outdir", str(tmp_path / "out")])
    assert res.exit_code == 1 and "w_dim must be an int in [1, 65536], got 100000000" in res.output, res.output
    assert "Traceback" not in res.output
