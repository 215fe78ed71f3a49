"""docs/python-api.md's code block runs as written on a generated cache (the
cache path is the only change)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import learnable_problem, write_feature_cache

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


@pytest.mark.slow
def test_the_python_api_page_runs(tmp_path, capsys):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S).group(1)
    x, y, split = learnable_problem(n=300, d=16)
    path = write_feature_cache(tmp_path / "c.h5", x, y, split)
    assert code.count('path = "cache/koniq_ViT-B-32_laion2b_s34b_b79k_squash.h5"') == 1
    code = code.replace('"cache/koniq_ViT-B-32_laion2b_s34b_b79k_squash.h5"', repr(str(path)))
    ns: dict = {}
    exec(compile(code, str(DOC), "exec"), ns)
    assert ns["w"].shape == ns["labels"].shape and abs(float(ns["w"].mean()) - 1.0) < 1e-5
    assert ns["z"].shape == ns["features"].shape
    assert ns["first"].shape == (300, 16) and ns["result"].best_epoch >= 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 + 6  # the test MAE, then one line per grid configuration
