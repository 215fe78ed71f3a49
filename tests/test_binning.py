"""One binning rule, exact for decimal labels (issue 9 §1).

Every expected bin is computed in exact decimal arithmetic from the label's
decimal text, as a user reads it in the CSV.  The library bins float32
values (what the cache stores); training (through `iqa train-head`) and
the report (through `iqa report`) must both give each label that bin."""
from __future__ import annotations

import json
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from iqa_cache.binning import MAX_BINS, bin_index
from iqa_cache.cli.main import app
from iqa_cache.errors import ConfigError
from iqa_cache.metrics import bin_of, value_mask
from iqa_cache.train.imbalance import Bins

from .conftest import write_feature_cache

runner = CliRunner()


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


def decimal_bin(text: str, lo: str, hi: str, size: str) -> int:
    lo_d, hi_d, size_d = Decimal(lo), Decimal(hi), Decimal(size)
    n = int(((hi_d - lo_d) / size_d).to_integral_value(rounding=ROUND_CEILING))
    k = int(((Decimal(text) - lo_d) / size_d).to_integral_value(rounding=ROUND_FLOOR))
    return min(max(k, 0), n - 1)


def grid(step: str, lo: str = "0", hi: str = "5") -> list[str]:
    s, a, b = Decimal(step), Decimal(lo), Decimal(hi)
    n = int((b - a) / s)
    return [str(a + i * s) for i in range(n + 1)]


def koniq_like(n: int = 400, seed: int = 0) -> list[str]:
    """MOS as KonIQ-10k writes them (e.g. 57.4286, 4 decimals here: 6
    significant digits), plus every edge of bins 0.5 and the values 1e-4 on
    either side of it."""
    rng = np.random.default_rng(seed)
    vals = {f"{v:.4f}" for v in rng.uniform(3, 97, n)}
    for k in range(1, 200):
        e = Decimal(k) / 2
        vals |= {str(e), str(e - Decimal("0.0001")), str(e + Decimal("0.0001"))}
    return sorted(vals, key=Decimal)


CASES = {  # name: (labels, lo, hi, bin size)
    "grid0.1": (grid("0.1"), "0", "5", "0.1"),
    "grid0.05": (grid("0.05"), "0", "5", "0.05"),
    "grid0.05-bin0.1": (grid("0.05"), "0", "5", "0.1"),
    "grid0.25": (grid("0.25"), "0", "5", "0.25"),
    "grid0.25-bin0.5": (grid("0.25"), "0", "5", "0.5"),
    "grid0.1-from1": (grid("0.1", "1", "5"), "1", "5", "0.1"),
    "koniq-bin1": (koniq_like(), "0", "100", "1"),
    "koniq-bin2": (koniq_like(), "0", "100", "2"),
    "koniq-bin0.5": (koniq_like(), "0", "100", "0.5"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bins_of_stored_labels_are_the_bins_of_their_decimals(case, dtype):
    labels, lo, hi, size = CASES[case]
    bins = Bins(float(lo), float(hi), float(size))
    want = np.array([decimal_bin(t, lo, hi, size) for t in labels])
    y = np.array([float(t) for t in labels], dtype=dtype)
    np.testing.assert_array_equal(bins.index(y), want)
    np.testing.assert_array_equal(bins.index_t(torch.from_numpy(y)).numpy(), want)
    # the same bins through the report's edge form (Table 1 ranges, plots)
    np.testing.assert_array_equal(bin_of(y, bins.edges()), want)


def test_a_value_just_below_an_edge_stays_below():
    b = Bins(0.0, 5.0, 0.1)
    np.testing.assert_array_equal(b.index(np.float32([1.3999, 1.4, 1.4001, 0.0999, 4.9999, 5.0])),
                                  [13, 14, 14, 0, 49, 49])
    b = Bins(0.0, 100.0, 1.0)
    np.testing.assert_array_equal(b.index(np.float32([56.9999, 57.0, 99.9999, 0.0001])), [56, 57, 99, 0])


def test_report_ranges_and_value_groups_use_decimal_values():
    y = np.float32([1.4, 1.3999, 2.5, 0.3, 0.29999])
    np.testing.assert_array_equal(bin_of(y, [0, 0.3, 1.4, 2.5, 5]), [2, 1, 3, 1, 0])
    np.testing.assert_array_equal(bin_of(np.float32([-0.1, 5.0, 5.1]), [0, 0.3, 5]), [-1, 1, -1])
    # a MOS of 3.35 on a 0.1 scale belongs with 3 (3.35 < 3.5); 0.35 + 3 * 0.1 ... edges at v +- 0.5
    np.testing.assert_array_equal(value_mask(np.float32([2.5, 3.4999, 3.5]), [3]), [True, True, False])


def test_bin_count_is_bounded_and_exact_at_the_top():
    assert Bins(0, 5, 0.1).n == 50
    assert Bins(0, 5, 0.3).n == 17
    assert Bins(0, 1, 1e-5).n == MAX_BINS
    with pytest.raises(ConfigError, match=r"more than 100000.*--label-range.*--bin-size"):
        Bins(0, 1e11, 1.0)
    assert bin_index([1.0], [0.0, 1.0]).tolist() == [0]


# --------------------------------------------------------------- through the CLI

def _cache_and_run(tmp_path, train, test, lo, hi, size):
    """A cache holding ``train`` (each label text once per listed time) and
    ``test`` labels, a one-epoch FDS run on it, and the report's shots."""
    val = [train[0], train[-1]]
    texts = train + test + val
    y = np.array([float(t) for t in texts], np.float32)
    split = np.array(["train"] * len(train) + ["test"] * len(test) + ["val"] * len(val), dtype=object)
    x = np.random.default_rng(0).normal(size=(len(y), 8)).astype(np.float32)
    cache = write_feature_cache(tmp_path / "c.h5", x, y, split, label_range=(float(lo), float(hi)))
    run = tmp_path / "run"
    r = iqa("train-head", "--cache", cache, "--out", run, "--fds", "--fds-ks", 1, "--bin-size", size,
            "--label-range", f"{lo},{hi}", "--epochs", 1, "--hidden", 8, "--blocks", 0, "--device", "cpu",
            "--no-progress")
    assert r.exit_code == 0, r.output
    seen = torch.load(run / "head.pt", weights_only=True)["fds.seen"].numpy()
    r = iqa("report", run, "--tables", "shots", "--format", "json", "--many", 1, "--few", 1)
    assert r.exit_code == 0, r.output
    (table,) = [t for t in json.loads(r.stdout)["tables"] if t["key"] == "shots"]
    baseline = [row for row in table["rows"] if row["kind"] == "baseline"][0]["values"]
    return seen, table["counts"], baseline


@pytest.mark.parametrize("case", ["grid0.1", "grid0.05", "grid0.25-bin0.5", "koniq-bin1", "koniq-bin2",
                                  "koniq-bin0.5"])
def test_training_and_report_bin_like_the_decimals(case, tmp_path):
    labels, lo, hi, size = CASES[case]
    n = Bins(float(lo), float(hi), float(size)).n
    # bin counts 0, 1, 2, 0, 1, 2, ... by label position: many (2), medium (1), few (0) with --many 1 --few 1
    train = [t for i, t in enumerate(labels) for _ in range(i % 3)]
    test = list(labels)
    seen, counts, baseline = _cache_and_run(tmp_path, train, test, lo, hi, size)

    dec_train = [decimal_bin(t, lo, hi, size) for t in train]
    want_seen = np.zeros(n, dtype=bool)
    want_seen[dec_train] = True
    np.testing.assert_array_equal(seen, want_seen)  # the bins training used for FDS

    per_bin = np.bincount(dec_train, minlength=n)
    shot = np.where(per_bin > 1, "many", np.where(per_bin < 1, "few", "medium"))
    test_shot = np.array([shot[decimal_bin(t, lo, hi, size)] for t in test])
    mean = Decimal(str(np.mean(np.float32([float(t) for t in train]).astype(np.float64))))
    for s in ("many", "medium", "few"):
        assert counts[f"MAE {s}"] == int((test_shot == s).sum()), s
        errs = [abs(float(t) - float(mean)) for t, ts in zip(test, test_shot) if ts == s]
        if errs:
            assert baseline[f"MAE {s}"] == pytest.approx(np.mean(errs), abs=1e-5), s


def test_outlier_label_gives_a_bounded_bin_error_not_a_huge_allocation(tmp_path):
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.uniform(0, 100, 59), [1e11]]).astype(np.float32)
    split = np.array(["train"] * 40 + ["val"] * 10 + ["test"] * 10, dtype=object)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    cache = write_feature_cache(tmp_path / "c.h5", x, y, split, label_range=(0.0, 1e11))  # as load_csv makes it
    for extra in ((), ("--lds",), ("--fds",)):  # bins of 1 over a range an outlier stretched to 1e11
        r = iqa("train-head", "--cache", cache, "--out", tmp_path / "run", "--epochs", 1, "--hidden", 8,
                "--device", "cpu", "--no-progress", "--bin-size", 1, *extra)
        assert r.exit_code == 2, r.output
        err = r.stderr.strip().splitlines()[-1]
        assert err.startswith("error: ") and "--label-range" in err and "--bin-size" in err, err
        assert "Traceback" not in r.output
        assert not (tmp_path / "run").exists()
    r = iqa("train-head", "--cache", cache, "--out", tmp_path / "run", "--epochs", 1, "--hidden", 8,
            "--device", "cpu", "--no-progress", "--label-range", "0,100", "--lds")
    assert r.exit_code == 0, r.output
    # the default bins are the range in 100 (issue 27's scale-aware default): bounded, whatever the range
    r = iqa("train-head", "--cache", cache, "--out", tmp_path / "run2", "--epochs", 1, "--hidden", 8,
            "--device", "cpu", "--no-progress", "--lds")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["bins"]["n"] == 100


def test_plain_training_computes_no_bins(tmp_path, monkeypatch):
    """No LDS, no FDS: nothing is binned or allocated per bin (the bins are
    only recorded, for the report)."""
    def boom(self, *a, **k):
        raise AssertionError("plain training binned the labels")

    monkeypatch.setattr(Bins, "index", boom)
    monkeypatch.setattr(Bins, "counts", boom)
    monkeypatch.setattr(Bins, "edges", boom)
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 100, 60).astype(np.float32)
    split = np.array(["train"] * 40 + ["val"] * 10 + ["test"] * 10, dtype=object)
    cache = write_feature_cache(tmp_path / "c.h5", rng.normal(size=(60, 8)).astype(np.float32), y, split)
    r = iqa("train-head", "--cache", cache, "--out", tmp_path / "run", "--epochs", 2, "--hidden", 8,
            "--bin-size", "0.001", "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
