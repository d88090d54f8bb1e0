"""One parser of torchrun's environment, used by training and by `opstylegan invert` (which joins and leaves the
process group through the same helpers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from opstylegan.cli.main import cli
from opstylegan.training import distributed
from opstylegan.training.distributed import DistInfo, torchrun_env

EXAMPLES = str(Path(__file__).resolve().parents[1] / "examples" / "fmnist")


def test_torchrun_env_parses_and_validates():
    assert torchrun_env({}) is None and torchrun_env({"RANK": "0"}) is None
    assert torchrun_env({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (2, 4, 1)
    assert torchrun_env({"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4, 3)  # one node: LOCAL_RANK = RANK
    with pytest.raises(ValueError, match="must be integers.*RANK='x'"):
        torchrun_env({"RANK": "x", "WORLD_SIZE": "2"})
    for bad in ({"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "0", "WORLD_SIZE": "0"},
                {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "-1"}):
        with pytest.raises(ValueError, match="out of range"):
            torchrun_env(bad)


def test_runs_module_has_no_parser_of_its_own():
    import opstylegan.inversion.runs as runs

    assert not hasattr(runs, "dist_info")


@pytest.fixture
def recorded(monkeypatch):
    calls: list[object] = []

    def init(device: torch.device) -> DistInfo:
        calls.append(("init", device))
        return DistInfo(device=device)

    monkeypatch.setattr(distributed, "init_distributed", init)
    monkeypatch.setattr(distributed, "shutdown", lambda: calls.append("shutdown"))
    return calls


def test_invert_joins_through_init_distributed_and_always_shuts_down(recorded, tmp_path):
    # A mistake found after joining (a matrix space for the baseline model) still leaves the group.
    r = CliRunner().invoke(cli, ["invert", "--model", "fmnist32-baseline", "--images", EXAMPLES,
                                 "--space", "W", "--outdir", str(tmp_path / "out"), "--device", "cpu"])
    assert r.exit_code != 0
    assert recorded == [("init", torch.device("cpu")), "shutdown"]


def test_invert_refuses_a_malformed_torchrun_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = CliRunner().invoke(cli, ["invert", "--images", EXAMPLES, "--outdir", str(tmp_path / "out"),
                                 "--device", "cpu"])
    assert r.exit_code == 2 and "torchrun environment out of range" in r.output
    assert not (tmp_path / "out").exists()
