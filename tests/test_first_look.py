"""Issue 17, what a newcomer sees first: `iqa --version`, the order of the
commands in `iqa --help`, and links in the README and docs/ that lead
somewhere."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import iqa_cache
from iqa_cache.cli.app import COMMAND_ORDER, PipelineOrder
from iqa_cache.cli.main import app

from .test_options import HEAVY

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
runner = CliRunner()


# ------------------------------------------------------------- --version

def not_installed(name):
    raise metadata.PackageNotFoundError(name)


@pytest.fixture
def fresh_version(monkeypatch):
    """iqa_cache.__version__ looked up again (it is cached on first use)."""
    monkeypatch.delitem(iqa_cache.__dict__, "__version__", raising=False)
    return monkeypatch


def test_version_is_the_installed_distributions():
    try:
        installed = metadata.version("iqa-cache")
    except metadata.PackageNotFoundError:
        pytest.skip("iqa-cache is not installed here (the fallback is tested below)")
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0, r.output
    assert r.stdout == f"iqa-cache {installed}\n"


def test_version_falls_back_to_pyproject_when_not_installed(fresh_version):
    fresh_version.setattr(metadata, "version", not_installed)
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0, r.output
    assert r.stdout == f"iqa-cache {PYPROJECT_VERSION}\n"
    assert iqa_cache.__version__ == PYPROJECT_VERSION


@pytest.mark.parametrize("pyproject", [None, '[project]\nname = "other"\nversion = "9.9"\n', "not toml ["])
def test_version_outside_a_checkout_is_unknown(fresh_version, tmp_path, pyproject):
    fresh_version.setattr(metadata, "version", not_installed)
    (tmp_path / "iqa_cache").mkdir()
    fresh_version.setattr(iqa_cache, "__file__", str(tmp_path / "iqa_cache" / "__init__.py"))
    if pyproject is not None:
        (tmp_path / "pyproject.toml").write_text(pyproject)
    assert iqa_cache.__version__ == iqa_cache.UNKNOWN_VERSION


def test_version_comes_first_and_ends_the_command():
    # eager: printed even with a command after it, which then does not run
    r = runner.invoke(app, ["--version", "train-head", "--cache", "/nonexistent.h5"])
    assert r.exit_code == 0 and r.stdout.startswith("iqa-cache ") and r.stdout.count("\n") == 1
    assert "--version" in runner.invoke(app, ["--help"]).stdout


def test_version_in_a_fresh_process_loads_no_heavy_library():
    code = ("import json, sys\nsys.argv = ['iqa', '--version']\nfrom iqa_cache.cli.main import main\n"
            "try:\n    main()\nfinally:\n"
            "    print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("iqa-cache ") and r.stdout.split() == ["iqa-cache", iqa_cache.__version__]
    loaded = set(json.loads(r.stderr.strip().splitlines()[-1]))
    assert not loaded & {*HEAVY, "timm"}


def test_importing_the_package_does_not_look_the_version_up():
    code = "import sys, iqa_cache.cli.main, iqa_cache.runs; print('importlib.metadata' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


# ------------------------------------------------------------- --help order

def help_commands(output: str) -> list[str]:
    lines = output.splitlines()
    start = lines.index("Commands:") + 1
    return [line.split()[0] for line in lines[start:] if line.startswith("  ") and line.split()]


def test_help_lists_the_commands_in_pipeline_order():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0, r.output
    assert help_commands(r.stdout) == ["embed", "import", "train-head", "ablate", "report", "predict", "demo"]
    assert tuple(help_commands(r.stdout)) == COMMAND_ORDER


def test_every_command_has_its_place_in_the_order():
    registered = typer.main.get_command(app).commands
    assert sorted(registered) == sorted(COMMAND_ORDER)


def test_the_order_does_not_depend_on_registration():
    demo = typer.Typer(cls=PipelineOrder, add_completion=False, rich_markup_mode=None)
    for name in ("zz-unknown", "demo", "train-head", "embed", "report", "ablate", "predict", "import", "aa-unknown"):
        demo.command(name)(lambda: None)
    group = typer.main.get_command(demo)
    with group.make_context("iqa", []) as ctx:
        names = group.list_commands(ctx)
    # commands not in the list come last, in the order they were registered
    assert names == [*COMMAND_ORDER, "zz-unknown", "aa-unknown"]
