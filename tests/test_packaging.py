"""Packaging: lazy imports, the --model option, one version string, the licence and py.typed in the wheel."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import opstylegan
from opstylegan.cli.main import SUBCOMMANDS, _command_docstring, cli

ROOT = Path(__file__).resolve().parents[1]

# Runs `opstylegan ARGS` in a fresh interpreter and prints, at exit, whether torch was ever imported.
_PROBE = """
import atexit, sys
atexit.register(lambda: print("TORCH_IMPORTED=" + str("torch" in sys.modules)))
{body}
"""


def _torch_imported(body: str) -> bool:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(body=body)], capture_output=True, text=True,
                         timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("TORCH_IMPORTED=")]
    assert lines, f"probe did not run: {out.stdout}\n{out.stderr}"
    return lines[-1] == "TORCH_IMPORTED=True"


def test_importing_the_cli_and_the_package_does_not_import_torch():
    assert not _torch_imported("import opstylegan, opstylegan.cli.main")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["invert", "--steps", "-1"], ["train", "--kimg", "x"],
                                  ["nosuchcommand"]])
def test_help_and_argument_errors_do_not_import_torch(args):
    body = f"import sys\nsys.argv = ['opstylegan', *{args!r}]\nfrom opstylegan.cli.main import main\nmain()"
    assert not _torch_imported(body)


def test_the_probe_can_see_torch():
    assert _torch_imported("import opstylegan\nopstylegan.Generator")


def test_lazy_names_are_the_real_classes():
    from opstylegan.config import DiscriminatorConfig, GeneratorConfig
    from opstylegan.models.discriminator import Discriminator
    from opstylegan.models.generator import Generator

    assert opstylegan.Generator is Generator and opstylegan.Discriminator is Discriminator
    assert opstylegan.GeneratorConfig is GeneratorConfig and opstylegan.DiscriminatorConfig is DiscriminatorConfig
    assert set(opstylegan.__all__) <= set(dir(opstylegan))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        opstylegan.Nope  # noqa: B018


def test_top_level_help_lists_each_command_with_its_own_short_help():
    """--help reads the help text from source; it must equal what the imported command would show."""
    result = CliRunner().invoke(cli, ["--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:")[1]
    for name, module in SUBCOMMANDS.items():
        assert _command_docstring(module) is not None, f"opstylegan/cli/{module}.py has no documented `command`"
        command = importlib.import_module(f"opstylegan.cli.{module}").command
        line = next(line for line in listed.splitlines() if line.split()[:1] == [name])
        assert line.split(None, 1)[1] == command.get_short_help_str(200 - 6 - max(map(len, SUBCOMMANDS)))


def test_generate_needs_no_model_option(tmp_path):
    """`--model` defaults to the shipped model; it was marked required (click 8.1 then refused the command)."""
    help_text = CliRunner().invoke(cli, ["generate", "--help"], terminal_width=200).output
    model_line = next(line for line in help_text.splitlines() if line.strip().startswith("--model"))
    assert "required" not in model_line
    result = CliRunner().invoke(cli, ["generate", "--seeds", "0", "--outdir", str(tmp_path / "g"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g" / "seed0000.png").is_file()


def test_one_version_string():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert importlib.metadata.version("opstylegan") == opstylegan.__version__


@pytest.mark.slow
def test_wheel_carries_licence_types_and_models(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(tmp_path)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("opstylegan-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist_info = f"opstylegan-{opstylegan.__version__}.dist-info"
        metadata = z.read(f"{dist_info}/METADATA").decode()
        licence = z.read(f"{dist_info}/licenses/LICENSE").decode()
    assert licence.startswith("MIT License") and "License-Expression: MIT" in metadata
    assert "Project-URL: Paper, " in metadata
    assert "opstylegan/py.typed" in names
    for model in ("fmnist32-overparam", "fmnist32-baseline"):
        assert {f"opstylegan/pretrained/{model}/{f}" for f in ("config.json", "model.safetensors")} <= names


def test_no_file_points_outside_the_repository():
    """Tests, code and docs work in any clone: no path into a sibling folder, no design notes that are not here."""
    patterns = ["DESIGN" + ".md", "../" + "shared", '"' + 'shared" /', "/work/" + "shared"]
    tracked = subprocess.run(["git", "ls-files", "src", "tests", "docs", "scripts", "benchmarks", "README.md"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    found = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".sh", ".toml", ".txt", ".json") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{name}: {p}" for p in patterns if p in text]
    assert not found, found
