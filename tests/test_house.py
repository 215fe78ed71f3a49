"""Issue 11's house rules that are not covered elsewhere: light imports of
the modules `iqa report` needs, warnings that stay readable, and the CPU
half-precision warning."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from iqa_cache.cli.app import MAX_WARNING_CHARS, setup_logging, shorten
from iqa_cache.cli.main import app
from iqa_cache.embed.encoder import warn_cpu_precision

HEAVY = ("torch", "open_clip", "timm", "h5py", "scipy", "matplotlib")


def loaded_after(code: str) -> list[str]:
    """The heavy top-level packages in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return [m for m in json.loads(out.strip().splitlines()[-1]) if m in HEAVY]


@pytest.mark.parametrize("module", ["iqa_cache.train.config", "iqa_cache.train.kernels", "iqa_cache.binning",
                                    "iqa_cache.device", "iqa_cache.metrics"])
def test_config_side_modules_import_no_heavy_library(module):
    assert loaded_after(f"import {module}") == []


def test_reading_runs_needs_no_torch():
    # `iqa report` reads runs; torch (1 s of imports) is only for saving and loading heads
    assert "torch" not in loaded_after("import iqa_cache.train.runs")


def test_kernels_build_windows_with_scipy_on_use():
    from iqa_cache.train.kernels import kernel_window, lds_weights

    w = kernel_window("gaussian", 5, 2.0)
    assert w.shape == (5,) and w.max() == 1.0 and w[0] == w[4] < w[1] == w[3] < w[2]
    weights = lds_weights([1.0, 1.0, 1.0, 50.0], reweight="sqrt_inv", ks=5, sigma=2.0)
    assert weights.mean() == pytest.approx(1.0, rel=1e-6) and weights[3] > weights[0] == weights[1]


def test_long_warning_is_cut_at_a_word_and_says_how_much():
    msg = "runs " + ", ".join(f"'vanilla_s{i}'" for i in range(1000)) + " were trained on random features"
    short = shorten(msg)
    assert len(msg) > 12_000 and len(short) < MAX_WARNING_CHARS + 80
    assert short.startswith("runs 'vanilla_s0', 'vanilla_s1'")
    kept = short.split(" ... (")[0]
    assert msg.startswith(kept) and kept.endswith("'") and not kept.endswith(",")
    left = len(msg) - msg.rfind(" ", 0, MAX_WARNING_CHARS)
    assert short.endswith(f" ... ({left:,} more characters; -v shows all)")
    assert shorten("short warning") == "short warning"


def test_long_warnings_are_cut_on_stderr_unless_verbose(capsys):
    log = logging.getLogger("iqa_cache.test_house")
    msg = "x " * 5000
    try:
        setup_logging(verbose=False)
        log.warning(msg)
        err = capsys.readouterr().err
        assert err.startswith("warning: x x") and "more characters; -v shows all" in err and len(err) < 800
        setup_logging(verbose=True)
        log.warning(msg)
        assert len(capsys.readouterr().err) > len(msg)
    finally:
        setup_logging()


def no_fast_bf16(monkeypatch):
    import iqa_cache.device as d

    monkeypatch.setattr(d, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(d, "cpu_has_avx512_bf16", lambda: False)


def test_half_precision_on_cpu_warns_it_is_slower(caplog, monkeypatch):
    no_fast_bf16(monkeypatch)  # this machine's CPU has AVX-512 bf16: see the next test
    with caplog.at_level(logging.WARNING, logger="iqa_cache.embed.encoder"):
        assert warn_cpu_precision("bf16", "cpu") is True
        assert warn_cpu_precision("fp16", "cpu") is True
        assert warn_cpu_precision("fp32", "cpu") is False
        assert warn_cpu_precision("bf16", "cuda") is False
    texts = [r.getMessage() for r in caplog.records]
    assert len(texts) == 2 and all("slower than fp32" in t for t in texts)
    assert "--precision bf16" in texts[0] and "--precision fp16" in texts[1]


def test_bf16_on_a_cpu_with_fast_bf16_warns_only_that_features_differ(caplog, monkeypatch):
    import iqa_cache.device as d

    monkeypatch.setattr(d, "cpu_has_avx512_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="iqa_cache.embed.encoder"):
        assert warn_cpu_precision("bf16", "cpu") is True
    (text,) = [r.getMessage() for r in caplog.records]
    assert "faster than fp32" in text and "not bit-comparable" in text and "slower" not in text


def test_embed_bf16_on_cpu_warns_through_the_cli(koniq_root, tiny_model, tmp_path, monkeypatch):
    no_fast_bf16(monkeypatch)
    r = CliRunner().invoke(app, ["embed", "--dataset", "koniq", "--root", str(koniq_root), "--limit", "4",
                                 "--model", tiny_model, "--pretrained", "none", "--device", "cpu",
                                 "--precision", "bf16", "--out", str(tmp_path / "c.h5"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "warning: --precision bf16 on the CPU is slower than fp32" in r.stderr


def _run(name: str, **cache):
    from pathlib import Path

    import pandas as pd

    from iqa_cache.train.runs import Run

    return Run(path=Path(name), name=name, config={"cache": cache}, predictions=pd.DataFrame(), metrics={})


def test_report_warnings_about_hundreds_of_runs_stay_short():
    from iqa_cache.train.provenance import run_warnings

    base = {"manifest_sha256": "m", "model": "ViT-B-32", "pretrained_sha256": "p", "resize_mode": "squash",
            "image_size": 224, "precision": "fp32"}
    random = [_run(f"lds_ks{k}_s{s}", pretrained_kind="none", content_id="c", **base)
              for k in range(50) for s in range(4)]
    (note,) = run_warnings(random)
    assert note.startswith("warning: all 200 runs were trained on features of a randomly initialised encoder")
    assert len(note) < 200
    # two contents of one cache: each group names six runs and counts the rest
    mixed = [_run(f"r{i}", pretrained_kind="tag", content_id="c1" if i < 150 else "c2", **base) for i in range(200)]
    (note,) = run_warnings(mixed)
    assert "'r0', 'r1', 'r2', 'r3', 'r4', 'r5' and 144 more (content c1)" in note
    assert "'r150', 'r151', 'r152', 'r153', 'r154', 'r155' and 44 more (content c2)" in note
    assert len(note) < 400
    # a few runs are all named, as before
    few = [_run("a", pretrained_kind="none", **base), _run("b", pretrained_kind="none", **base),
           _run("c", pretrained_kind="tag", **base)]
    assert run_warnings(few)[0].startswith("warning: runs 'a', 'b' were trained on features of a randomly")


def test_report_checks_live_in_its_config_and_the_cli_reads_its_defaults():
    from iqa_cache.errors import ConfigError
    from iqa_cache.report import ReportConfig

    with pytest.raises(ConfigError, match="--groups applies to the values table"):
        ReportConfig(groups=((3.0,),), tables=("ranges",))
    with pytest.raises(ConfigError, match="--n-boot must be at least 100"):
        ReportConfig(n_boot=50)
    cmd = typer_command("report")
    defaults = {p.name: p.default for p in cmd.params}
    lib = ReportConfig()
    for name in ("many", "few", "group_seeds", "baseline", "n_boot", "boot_seed"):
        assert defaults[name] == getattr(lib, name), name
    assert str(getattr(defaults["split"], "value", defaults["split"])) == lib.split


def typer_command(name: str):
    import typer.main

    group = typer.main.get_command(app)
    return group.commands[name]


def test_the_tree_passes_the_linter():
    pytest.importorskip("ruff", reason="ruff comes with the [dev] extra")
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=repo, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout[-3000:]
