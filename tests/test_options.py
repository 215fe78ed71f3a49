"""One source of truth for the training options (issue 11): the CLI's
defaults are the library's, the grid and the CLI build the same
TrainConfig from the same flat values, run names say what was trained, and
the CLI starts without the heavy libraries."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from enum import Enum
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from iqa_cache.cli.app import COMMAND_ORDER
from iqa_cache.cli.main import app
from iqa_cache.errors import ConfigError
from iqa_cache.train.config import FLAT_DEFAULTS, FLAT_FIELDS, GRID_KEYS, PRESETS, Preset, TrainConfig, run_name
from iqa_cache.train.grid import apply_point, expand, parse_grid

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
NOT_OPTIONS = {"betas", "eps"}  # flat names that only presets (and the library) set


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


def params(command: str) -> dict:
    cmd = typer.main.get_command(app).commands[command]
    return {p.name: p for p in cmd.params}


def _plain(v):
    return v.value if isinstance(v, Enum) else v


@pytest.mark.parametrize("command", ["train-head", "ablate"])
def test_every_training_option_defaults_to_the_librarys_default(command):
    got = params(command)
    flat = [n for n in FLAT_FIELDS if n not in NOT_OPTIONS]
    assert set(flat) <= set(got), sorted(set(flat) - set(got))
    for name in flat:
        assert _plain(got[name].default) == FLAT_DEFAULTS[name], name
    # and the library's defaults are TrainConfig()'s ("reweight" None: it follows --lds)
    assert TrainConfig.from_flat({k: v for k, v in FLAT_DEFAULTS.items()}) == TrainConfig()
    assert {k: v for k, v in TrainConfig().to_flat().items() if k != "reweight"} == \
        {k: v for k, v in FLAT_DEFAULTS.items() if k != "reweight"}


def test_flat_round_trip_and_unknown_names():
    cfg = TrainConfig.from_flat({"lds": True, "reweight": "inverse", "fds": True, "fds_ks": 7, "lr": 0.01,
                                 "hidden": 64, "blocks": 1, "dropout": 0.2, "label_range": [0, 4],
                                 "betas": (0.8, 0.99), "schedule": "cosine", "seed": 4})
    assert TrainConfig.from_flat(cfg.to_flat()) == cfg
    assert cfg.head.hidden_dim == 64 and cfg.optim.betas == (0.8, 0.99) and cfg.label_range == (0.0, 4.0)
    with pytest.raises(ConfigError, match="unknown training option.*ldsks"):
        TrainConfig.from_flat({"ldsks": 3})
    # the default-reweight rule, once: sqrt_inv with LDS, else none; a base keeps its own unless told
    assert TrainConfig.from_flat({"lds": True}).lds.reweight == "sqrt_inv"
    assert TrainConfig.from_flat({}).lds.reweight == "none"
    base = TrainConfig.from_flat({"reweight": "inverse"})
    assert TrainConfig.from_flat({"lds": True}, base).lds.reweight == "inverse"
    assert TrainConfig.from_flat({"lds": True, "reweight": None}, base).lds.reweight == "sqrt_inv"
    assert set(Preset) == set(PRESETS) and all(isinstance(p, str) for p in Preset)


@pytest.mark.parametrize("option,value", [("--fds-momentum", "0.9995"), ("--dropout", "0.97")])
def test_cli_bounds_are_the_configs(option, value, tmp_path):
    """Values in the config's range are accepted (the CLI once stopped at 0.999 / 0.95)."""
    r = iqa("train-head", "--cache", tmp_path / "none.h5", option, value, "--show-config")
    assert r.exit_code == 0, r.output
    r = iqa("train-head", "--cache", tmp_path / "none.h5", option, "1", "--show-config")
    assert r.exit_code == 2 and option in r.stderr and r.stderr.startswith("error: ")


def _cli_args(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        flag = "--" + k.replace("_", "-")
        out += [flag if v else "--no-" + k.replace("_", "-")] if isinstance(v, bool) else [flag, str(v)]
    return out


def _show(tmp_path, *args) -> dict:
    r = iqa("train-head", "--cache", tmp_path / "none.h5", *args, "--show-config")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["train"]


def _as_json(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps(cfg.to_dict()))


@pytest.mark.parametrize("values", [
    {"lds": True},
    {"reweight": "inverse"},
    {"lds": True, "lds_kernel": "triang", "lds_ks": 7, "lds_sigma": 1.5, "fds": True, "fds_kernel": "laplace",
     "fds_ks": 3, "fds_sigma": 0.5, "bin_size": 2.0, "lr": 0.01, "seed": 3},
    {"lds": False, "reweight": "sqrt_inv", "fds": True},
])
@pytest.mark.parametrize("base_args", [[], ["--epochs", "3", "--reweight", "inverse", "--preset", "paper-koniq"]])
def test_grid_and_cli_build_the_same_config(tmp_path, values, base_args):
    assert set(values) <= set(GRID_KEYS)
    base = TrainConfig.from_dict(_show(tmp_path, *base_args))
    auto = "--reweight" not in base_args
    from_grid = apply_point(base, values, auto_reweight=auto)
    assert _as_json(from_grid) == _show(tmp_path, *base_args, *_cli_args(values))
    [point] = expand(parse_grid("; ".join(f"{k}={v}" for k, v in values.items())), base, (0.0, 100.0),
                     auto_reweight=auto).points
    assert point.config == from_grid.resolved((0.0, 100.0))  # a plan holds the numbers it trains with


def test_run_names_say_what_was_trained():
    def name(**values):
        return run_name(TrainConfig.from_flat(values))

    assert name() == "vanilla_s0" and name(lds=True, seed=2) == "lds_s2" and name(lds=True, fds=True) == "lds+fds_s0"
    assert name(reweight="inverse") == "rw-inverse_s0"  # was vanilla_s0: it trains with inverse weights
    assert name(lds=True, reweight="inverse", fds=True) == "lds-inverse+fds_s0"
    assert name(reweight="sqrt_inv", fds=True) == "rw-sqrt_inv+fds_s0"
    base = TrainConfig.from_flat({"reweight": "inverse"})
    names = [p.name for p in expand(parse_grid("fds=on,off"), base, (0.0, 100.0)).points]
    assert names == ["fds=on,reweight=inverse", "fds=off,reweight=inverse"]  # was "fds=off": reads as vanilla


HEAVY = ("torch", "open_clip", "h5py", "pandas", "scipy", "matplotlib")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_the_cli_imports_no_heavy_library():
    code = f"import sys, iqa_cache.cli.main; print([m for m in {HEAVY!r} if m in sys.modules])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


WRAPPER = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "iqa"
from iqa_cache.cli.main import main
main()
"""


def test_train_head_never_imports_open_clip(tmp_path):
    from .conftest import learnable_problem, write_feature_cache

    x, y, split = learnable_problem(n=200)
    cache = write_feature_cache(tmp_path / "koniq_feats.h5", x, y, split)
    mods = tmp_path / "modules.json"
    r = subprocess.run([sys.executable, "-c", WRAPPER, str(mods), "train-head", "--cache", str(cache), "--epochs",
                        "2", "--hidden", "16", "--reweight", "inverse", "--device", "cpu", "--no-progress"],
                       capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(mods.read_text()))
    assert "torch" in loaded and "open_clip" not in loaded and "matplotlib" not in loaded
    # the default run directory says what was trained
    assert (tmp_path / "runs" / "koniq_feats" / "rw-inverse_s0" / "head.pt").is_file()


@pytest.mark.parametrize("command", COMMAND_ORDER)
def test_help_reads_well(command):
    """Every option and argument has help text; no '<list[Path]>', '{RUN}...'
    or '<int range>' in the help."""
    missing = [p.name for p in params(command).values() if not (p.help or "").strip()]
    assert not missing, (command, missing)
    r = iqa(command, "--help")
    assert r.exit_code == 0, r.output
    assert "<list[" not in r.output and " range>" not in r.output, command
    usage = next(line for line in r.output.splitlines() if line.startswith("Usage:"))
    assert "{" not in usage and "<" not in usage, usage


def test_cli_choices_are_the_librarys():
    from iqa_cache.cli import common
    from iqa_cache.embed.decode import DECODERS
    from iqa_cache.embed.loop import PIPELINES
    from iqa_cache.embed.preprocess import PRECISIONS, RESIZE_MODES
    from iqa_cache.sources.datasets import OUT_OF_RANGE_POLICIES
    from iqa_cache.sources.dispatch import DATASETS

    for enum, values in ((common.DatasetName, DATASETS), (common.OutOfRange, OUT_OF_RANGE_POLICIES),
                         (common.Pipeline, PIPELINES), (common.Decoder, DECODERS), (common.Precision, PRECISIONS),
                         (common.ResizeMode, RESIZE_MODES)):
        assert tuple(e.value for e in enum) == tuple(values), enum
