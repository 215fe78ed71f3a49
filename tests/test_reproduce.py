"""docs/reproduce.md's commands, run as written on a generated folder in
KonIQ-10k's exact layout: the only changes are the dataset root, a tiny
random-weight encoder instead of the LAION download, and a few epochs."""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iqa_cache.cli.main import app

DOC = Path(__file__).resolve().parents[1] / "docs" / "reproduce.md"
MARK = "<!-- the test tests/test_reproduce.py runs this block"


def doc_block() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    block = text.split(MARK, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_the_block_is_the_tables_recipe():
    lines = doc_block()
    assert [ln.split()[1] for ln in lines if ln.startswith("iqa ")] == ["embed", "ablate", "ablate", "report"]
    assert all("--preset paper-koniq" in ln for ln in lines if ln.startswith("iqa ablate"))


@pytest.mark.slow
def test_reproduce_md_runs_on_the_koniq_layout(koniq_root, tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env: dict[str, str] = {}
    extra = {"embed": ["--model", tiny_model, "--pretrained", "none", "--device", "cpu", "--workers", "0",
                       "--no-progress"],
             "ablate": ["--epochs", "3", "--no-progress"]}
    outputs = {}
    runner = CliRunner()
    for line in doc_block():
        if m := re.fullmatch(r"(\w+)=(.*)", line):  # a shell variable
            value = m.group(2)
            env[m.group(1)] = str(koniq_root) if m.group(1) == "KONIQ" else os.path.expanduser(value)
            continue
        words = [w for w in shlex.split(line)]
        words = [re.sub(r"\$(\w+)", lambda g: env[g.group(1)], w) for w in words]
        assert words[0] == "iqa"
        sub = words[1]
        r = runner.invoke(app, words[1:] + extra.get(sub, []))
        assert r.exit_code == 0, f"{line}\n{r.output}"
        outputs[sub] = r.output
    report = outputs["report"]
    # Table 1's columns and its three rows (5 seeds each), the baseline, and the versus table
    assert "| [0,20) | [20,40) | [40,60) | [60,80) | [80,100] | All |" in report
    for row in ("method=vanilla (5 seeds)", "method=lds (5 seeds)"):
        assert f"| {row} |" in report
    assert re.search(r"\| [^|]*fds[^|]* \(5 seeds\) \|", report), report
    assert "baseline: train mean" in report and "vs method=vanilla (5 seeds)" in report
    assert "warning" not in report.lower() or "randomly initialised" in report
