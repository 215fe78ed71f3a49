"""The imbalance methods beyond LDS/FDS: each loss and its gradient against a
literal loop over its formula (tests/reference.py), the label priors, the
stack mixing methods against each method alone, and the combinations
refused.  Against the official code, as written: tests/test_official_*.py."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from iqa_cache import cache
from iqa_cache.binning import Bins
from iqa_cache.errors import ConfigError
from iqa_cache.train.config import TrainConfig
from iqa_cache.train.fit import OptimConfig
from iqa_cache.train.head import HeadConfig
from iqa_cache.train.methods import METHODS, MethodConfig
from iqa_cache.train.priors import (
    batch_counts,
    bni_prior,
    dense_weights,
    fit_gmm,
    kde_density,
    label_pdf,
    pseudo_labels,
)
from iqa_cache.train.stacked import plan_stacks, train_stack
from iqa_cache.train.stacked.methods import (
    BlackboxRanker,
    StackLoss,
    bmc_loss,
    bni_loss,
    dist_term,
    gai_loss,
    normalised_rank,
)
from tests.reference import (
    ref_bmc,
    ref_bni,
    ref_dense_weights,
    ref_dist,
    ref_gai,
)

from .conftest import koniq_like_labels, learnable_problem, write_feature_cache
from .test_official_ranksim import OfficialTrueRanker

K, B, H = 3, 12, 5
TOL = dict(rtol=1e-6, atol=1e-6)
RANK_TOL = dict(rtol=1e-6, atol=1e-6, check_dtype=False)  # the official ranks are float32 (``.float()``)


def batch(seed: int = 0, k: int = K, b: int = B, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    pred = (50 + 20 * torch.randn(k, b, generator=g, dtype=dtype)).requires_grad_(True)
    target = 50 + 20 * torch.randn(k, b, generator=g, dtype=dtype)
    sigma = torch.tensor([3.0, 8.0, 15.0][:k], dtype=dtype, requires_grad=True)
    return pred, target, sigma


def grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


def compare(stacked_fn, ref_fn, pred, target, sigma):
    """Each configuration's loss and its gradients (pred, sigma) against the reference."""
    got = stacked_fn(pred, target, sigma ** 2)
    g_pred, g_sigma = grads(got.sum(), pred, sigma)
    for k in range(len(got)):
        p, s = pred.detach()[k].clone().requires_grad_(True), sigma.detach()[k].clone().requires_grad_(True)
        want = ref_fn(k, p, target[k], s ** 2)
        wp, ws = grads(want, p, s)
        torch.testing.assert_close(got[k], want, **TOL)
        torch.testing.assert_close(g_pred[k], wp, **TOL)
        torch.testing.assert_close(g_sigma[k], ws, **TOL)


def test_bmc_loss_and_gradients_equal_the_official_formula():
    compare(bmc_loss, lambda k, p, t, v: ref_bmc(p, t, v), *batch(0))


def test_gai_loss_and_gradients_equal_the_official_formula():
    g = torch.Generator().manual_seed(1)
    means = 100 * torch.rand(K, 4, generator=g, dtype=torch.float64)
    variances = 1 + 50 * torch.rand(K, 4, generator=g, dtype=torch.float64)
    w = torch.rand(K, 4, generator=g, dtype=torch.float64)
    w = w / w.sum(1, keepdim=True)
    compare(lambda p, t, v: gai_loss(p, t, v, means, variances, w.log()),
            lambda k, p, t, v: ref_gai(p, t, v, means[k], variances[k], w[k]), *batch(1))


def test_bni_loss_and_gradients_equal_the_official_formula_over_non_empty_buckets():
    labels = koniq_like_labels(300, seed=2)
    bins = Bins(0, 100, 5.0)
    centres, weights = bni_prior(labels, bins)
    assert (weights == 0).any() and weights.sum() == pytest.approx(1.0)  # empty end bins: excluded
    c = torch.tensor(centres).expand(K, -1)
    w = torch.tensor(weights).expand(K, -1)
    with np.errstate(divide="ignore"):
        logw = torch.tensor(np.log(weights)).expand(K, -1)
    compare(lambda p, t, v: bni_loss(p, t, v, c, logw), lambda k, p, t, v: ref_bni(p, t, v, c[k], w[k]), *batch(2))


def test_dist_loss_and_gradient_equal_the_official_formula():
    pred, target, _ = batch(3)
    labels = koniq_like_labels(500, seed=3)
    bins = Bins(0, 100, 1.0)
    pseudo = torch.tensor(pseudo_labels(label_pdf(labels, bins, 0.5), np.arange(101.0), B)).expand(K, -1)
    weight = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    from iqa_cache.train.stacked.losses import loss_terms

    got = weight * dist_term(pred, pseudo, "l1") + loss_terms(pred, target, "l1").mean(1)
    (g,) = grads(got.sum(), pred)
    for k in range(K):
        p = pred.detach()[k].clone().requires_grad_(True)
        want = ref_dist(p, target[k], pseudo[k], float(weight[k]))
        torch.testing.assert_close(got[k], want, **TOL)
        torch.testing.assert_close(g[k], grads(want, p)[0], **TOL)


def test_the_ranker_forward_and_backward_equal_true_ranker_with_masked_entries():
    g = torch.Generator().manual_seed(6)
    seq = torch.randn(2, 4, 7, generator=g, dtype=torch.float64)
    sel = torch.tensor([[1, 1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    n = sel.sum(1)
    masked = torch.where(sel.unsqueeze(1), seq, -math.inf).requires_grad_(True)
    lam = torch.tensor([2.0, 0.5], dtype=torch.float64)
    up = torch.randn(2, 4, 7, generator=g, dtype=torch.float64)
    out = BlackboxRanker.apply(masked, lam, n)
    (back,) = torch.autograd.grad(out, masked, up)
    for k in range(2):
        cols = sel[k].nonzero()[:, 0]
        for i in range(4):
            s = seq[k, i, cols].view(1, -1).clone().requires_grad_(True)
            r = OfficialTrueRanker.apply(s, float(lam[k]))  # no ties here: its unstable sort ranks as ours
            torch.testing.assert_close(out[k, i, cols], r[0], **RANK_TOL)
            (rb,) = torch.autograd.grad(r, s, up[k, i, cols].view(1, -1))
            torch.testing.assert_close(back[k, i, cols], rb[0], **RANK_TOL)
            assert (back[k, i, ~sel[k]] == 0).all()
    # the ranker moves: a nudge that reorders entries gives a non-zero gradient
    assert back.abs().sum() > 0


def test_ranks_are_largest_first_and_normalised_by_the_selected_count():
    seq = torch.tensor([[[0.1, 0.9, -math.inf, 0.5]]])
    assert normalised_rank(seq, torch.tensor([3]))[0, 0].tolist() == pytest.approx([1.0, 1 / 3, 4 / 3, 2 / 3])


# ----------------------------------------------------------------- priors

def test_dense_weights_equal_the_literal_computation():
    labels = koniq_like_labels(60, seed=7)
    for alpha in (0.0, 0.5, 1.0, 2.0):
        got = dense_weights(labels, alpha, 1e-6)
        np.testing.assert_allclose(got, ref_dense_weights(labels, alpha, 1e-6), rtol=1e-6, atol=1e-6)
        assert got.mean() == pytest.approx(1.0, abs=1e-6)
    w = dense_weights(labels, 1.0, 1e-6)
    dens = kde_density(labels, labels, 5.0)
    assert w[np.argmin(dens)] > 1 > w[np.argmax(dens)]  # rare labels weigh more


def test_the_gridded_density_of_a_large_label_set_matches_the_exact_sum():
    labels = koniq_like_labels(20000, seed=8)
    at = np.linspace(5, 95, 50)
    exact = kde_density(labels, at, 2.0)
    gridded = kde_density(labels, at, 2.0, exact_pairs=0)
    np.testing.assert_allclose(gridded, exact, rtol=1e-3, atol=1e-7)


def test_gmm_recovers_a_two_component_mixture_deterministically():
    rng = np.random.default_rng(9)
    y = np.concatenate([rng.normal(20, 3, 3000), rng.normal(70, 6, 1000)])
    m = fit_gmm(y, 2)
    order = np.argsort(m.means)
    np.testing.assert_allclose(m.means[order], [20, 70], atol=0.5)
    np.testing.assert_allclose(np.sqrt(m.variances[order]), [3, 6], atol=0.3)
    np.testing.assert_allclose(m.weights[order], [0.75, 0.25], atol=0.02)
    again = fit_gmm(y, 2)
    assert (again.means == m.means).all()


def ref_batch_counts(density, batch_size, region_adjustment=0.5):
    """Dist Loss's get_batch_label_distribution as written (its branches)."""
    num = density * batch_size
    range_res = int(region_adjustment * len(density))
    cum = np.cumsum(num)
    rcum = np.cumsum(num[::-1])[::-1]
    f = int(np.where(cum >= 1)[0][0])
    b = int(np.where(rcum >= 1)[0][-1])
    counts = np.zeros(len(density), dtype=np.int64)
    counts[f] = round(cum[f])
    counts[b] = round(rcum[b])
    counts[f + 1:b] = np.round(num[f + 1:b])
    res = batch_size - counts.sum()
    m = int(np.argmax(counts))
    if abs(res) <= range_res:
        start = m - abs(res) // 2
        counts[start:start + abs(res)] += int(np.sign(res))
    else:
        start = m - range_res // 2
        counts[start:start + range_res] += (res // range_res) * int(np.sign(res))
        counts[m] += res % range_res
    return counts


@pytest.mark.parametrize("n", [64, 256, 512])
def test_pseudo_label_counts_follow_dist_loss_and_sum_to_the_batch(n):
    labels = koniq_like_labels(7058, seed=10)
    pdf = label_pdf(labels, Bins(0, 100, 1.0), 0.5)
    counts = batch_counts(pdf, n)
    assert counts.sum() == n and counts.min() >= 0
    np.testing.assert_array_equal(counts, ref_batch_counts(pdf, n))
    p = pseudo_labels(pdf, np.arange(101.0), n)
    assert len(p) == n and (np.diff(p) >= 0).all()
    assert abs(np.median(p) - np.median(labels)) < 3
    # a batch too small for the official rule still gets n labels
    assert batch_counts(pdf, 1).sum() == 1 and batch_counts(pdf, 3).sum() == 3


# ----------------------------------------------------------- the stack

BASE = TrainConfig(head=HeadConfig(hidden_dim=16, n_blocks=1), optim=OptimConfig(lr=3e-3), epochs=4,
                   batch_size=64, device="cpu")


def method_cfg(name: str, **kw) -> TrainConfig:
    return TrainConfig.from_flat({"method": name, **kw}, BASE)


ALL = [method_cfg("vanilla"), method_cfg("lds"), method_cfg("bmc", seed=1), method_cfg("gai", gai_components=3),
       method_cfg("bni", bni_lds=True), method_cfg("dist", seed=2), method_cfg("ranksim", ranksim_gamma=10.0),
       method_cfg("denseweight", dw_alpha=0.5), method_cfg("bmc", bmse_fix_sigma=True, seed=3),
       method_cfg("ranksim", lds=True, seed=4)]


def test_a_stack_mixing_methods_computes_each_ones_loss_as_alone():
    labels = koniq_like_labels(400, seed=11).astype(np.float32)
    bins = Bins(0, 100, 1.0)
    k = len(ALL)
    g = torch.Generator().manual_seed(12)
    pred = (50 + 20 * torch.randn(k, 64, generator=g)).requires_grad_(True)
    target = torch.from_numpy(labels[:64]).expand(k, -1)
    weights = 0.5 + torch.rand(k, 64, generator=g)
    z = torch.randn(k, 64, 8, generator=g).relu().requires_grad_(True)
    b = bins.index_t(target[0]).expand(k, -1)
    together = StackLoss(ALL, labels, bins, "cpu")
    got = together(pred, target, weights, z, b)
    g_pred, g_z, g_sigma = torch.autograd.grad(got.sum(), [pred, z, together.log_sigma])
    for i, c in enumerate(ALL):
        alone = StackLoss([c], labels, bins, "cpu")
        p, zz = pred.detach()[i:i + 1].clone().requires_grad_(True), z.detach()[i:i + 1].clone().requires_grad_(True)
        want = alone(p, target[i:i + 1], weights[i:i + 1], zz, b[i:i + 1])
        wp, wz, ws = torch.autograd.grad(want.sum(), [p, zz, alone.log_sigma], allow_unused=True)
        torch.testing.assert_close(got[i], want[0], rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(g_pred[i], wp[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g_z[i], wz[0] if wz is not None else torch.zeros_like(g_z[i]), rtol=1e-6,
                                   atol=1e-6)
        torch.testing.assert_close(g_sigma[i], ws[0] if ws is not None else torch.zeros(()), rtol=1e-6, atol=1e-6)
    bmse = [i for i, c in enumerate(ALL) if c.method.bmse]
    assert all(g_sigma[i] != 0 for i in bmse)  # learnt or fixed, sigma has a gradient ...
    assert together.sigma_learnt.tolist() == [c.method.bmse and not c.method.bmse_fix_sigma for c in ALL]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    x, y, split = learnable_problem(n=500)
    return cache.load(write_feature_cache(tmp_path_factory.mktemp("m") / "f.h5", x, y, split))


def test_every_method_trains_in_one_stack_as_one_by_one(data):
    assert len(plan_stacks(ALL, 64)) == 1
    together = train_stack(data, ALL)
    for cfg, res in zip(ALL, together):
        alone = train_stack(data, [cfg])[0]
        assert res.config.method == cfg.resolved(data.label_range).method
        assert res.best_epoch == alone.best_epoch
        np.testing.assert_allclose(res.predictions["pred"], alone.predictions["pred"], rtol=1e-4, atol=2e-3)
        assert [h["val_mae"] for h in res.history] == pytest.approx([h["val_mae"] for h in alone.history],
                                                                   abs=2e-3)
    sig = {c.method.bmse_fix_sigma: r.history[-1]["noise_sigma"] for c, r in zip(ALL, together) if c.method.bmse}
    assert sig[True] == pytest.approx(10.0) and sig[False] != pytest.approx(10.0)  # fixed stays, learnt moves
    # the methods really train differently
    assert len({round(r.best_val_mae, 3) for r in together}) >= len(METHODS) - 1


# ------------------------------------------------------------ the config

def test_method_lds_turns_lds_on_and_the_others_off():
    assert method_cfg("lds").lds.enabled and method_cfg("lds").lds.reweight == "sqrt_inv"
    on = TrainConfig.from_flat({"lds": True})
    assert on.method.name == "lds" and TrainConfig.from_flat({"method": "bmc"}, on).lds.enabled is False
    assert TrainConfig.from_flat({"method": "vanilla"}, on).lds.reweight == "none"
    assert TrainConfig.from_flat({"lds": False}, on).method.name == "vanilla"
    assert TrainConfig.from_dict(on.to_dict()) == on
    old = on.to_dict()
    del old["method"]  # a run written before methods existed reads back as the same configuration
    assert TrainConfig.from_dict(old) == on


@pytest.mark.parametrize("flat,match", [
    ({"method": "bmc", "lds": True}, "--method bmc with --lds is not meaningful: Balanced MSE"),
    ({"method": "denseweight", "reweight": "inverse"}, "--method denseweight with --reweight inverse"),
    ({"method": "lds", "lds": False}, "--method lds trains with LDS loss weights"),
    ({"method": "magic"}, "--method 'magic' is not one of vanilla, lds, bmc"),
    ({"method": "gai", "gai_components": 0}, "--gai-components must be a positive integer"),
    ({"method": "bmc", "bmse_sigma": 0.0}, "--bmse-sigma must be a positive number"),
    ({"method": "bni", "bni_sigma": -1.0}, "--bni-sigma must be a positive number"),
    ({"method": "ranksim", "ranksim_rows": "batch"}, "--ranksim-rows 'batch' is not one of label, bin"),
])
def test_meaningless_or_bad_method_settings_are_refused_in_one_line(flat, match):
    with pytest.raises(ConfigError, match=match) as e:
        TrainConfig.from_flat(flat)
    assert "\n" not in str(e.value)


def test_methods_that_compose_with_lds_weights_keep_them():
    for m in ("dist", "ranksim"):
        c = method_cfg(m, lds=True)
        assert c.lds.enabled and c.method.name == m and c.tag == f"lds+{m}"
    assert method_cfg("bmc", fds=True).tag == "bmc+fds"
    assert replace(MethodConfig(), name="gai").bmse


# ----------------------------------------------------------- the grid key

def test_every_grid_key_has_a_parser_and_method_values_are_checked():
    from iqa_cache.train.config import GRID_KEYS
    from iqa_cache.train.grid import parse_grid
    from iqa_cache.train.grid.spec import PARSERS

    assert set(PARSERS) == set(GRID_KEYS)
    spec = parse_grid("method=vanilla,lds,bmc,gai,bni,dist,ranksim,denseweight; seed=0..9")
    assert spec.size == 80 and dict(spec.axes)["seed"] == tuple(range(10))
    with pytest.raises(ConfigError, match="grid method='magic' is not valid: use one of vanilla, lds, bmc"):
        parse_grid("method=magic")
    with pytest.raises(ConfigError, match="a range A..B is for seed"):
        parse_grid("lr=1..3")


def test_bni_sigma_and_ranksim_rows_are_grid_keys_used_only_where_they_act():
    from iqa_cache.train.grid import expand, parse_grid

    plan = expand(parse_grid("method=bni,ranksim; bni_lds=on,off; bni_sigma=1,2; lds_sigma=2,5; "
                             "ranksim_rows=label,bin"), BASE, (0.0, 100.0), auto_reweight=True)
    names = sorted(p.name for p in plan.points)
    # BNI smooths with --bni-sigma (not --lds-sigma), only with --bni-lds; the rows key only for RankSim
    assert names == sorted(["method=bni,bni_lds=on,bni_sigma=1", "method=bni,bni_lds=on,bni_sigma=2",
                            "method=bni,bni_lds=off", "method=ranksim,ranksim_rows=label",
                            "method=ranksim,ranksim_rows=bin"])
    cfg = next(p.config for p in plan.points if p.name == "method=ranksim,ranksim_rows=bin")
    assert cfg.method.ranksim_rows == "bin" and StackLoss([cfg], np.arange(10.0), Bins(0, 10, 1.0), "cpu").needs_bins
    assert not StackLoss([method_cfg("ranksim")], np.arange(10.0), Bins(0, 10, 1.0), "cpu").needs_bins
    with pytest.raises(ConfigError, match="grid ranksim_rows='batch' is not valid: use one of label, bin"):
        parse_grid("ranksim_rows=batch")


def test_a_method_grid_drops_unused_settings_and_skips_meaningless_combinations():
    from iqa_cache.train.grid import expand, parse_grid

    plan = expand(parse_grid("method=vanilla,bmc,ranksim; lds=on,off; ranksim_gamma=10,100"), BASE, (0.0, 100.0),
                  auto_reweight=True)
    names = sorted(p.name for p in plan.points)
    # ranksim_gamma only where RankSim trains; bmc with LDS on is refused (skipped, with the reason)
    assert names == sorted(["method=vanilla,lds=on", "method=vanilla,lds=off", "method=bmc,lds=off",
                            "method=ranksim,lds=on,ranksim_gamma=10", "method=ranksim,lds=on,ranksim_gamma=100",
                            "method=ranksim,lds=off,ranksim_gamma=10", "method=ranksim,lds=off,ranksim_gamma=100"])
    assert [p.skipped for p in plan.skipped] == ["--method bmc with --lds is not meaningful: Balanced MSE already "
                                                 "balances the loss by its batch-based label prior; drop --lds"] * 2
    assert len(plan_stacks([p.config for p in plan.points], 64)) == 1  # all methods share one stack


def test_train_head_method_through_the_cli(data, tmp_path):
    from typer.testing import CliRunner

    from iqa_cache.cli.main import app

    def iqa(*a):
        return CliRunner().invoke(app, [str(x) for x in a])

    common = ["--cache", data.path, "--epochs", 3, "--hidden", 16, "--blocks", 1, "--no-progress", "--device", "cpu"]
    r = iqa("train-head", *common, "--method", "gai", "--gai-components", 3, "--fds", "--out", tmp_path / "g")
    assert r.exit_code == 0, r.output
    cfg = __import__("json").loads((tmp_path / "g" / "config.json").read_text())["train"]
    assert cfg["method"]["name"] == "gai" and cfg["method"]["gai_components"] == 3 and cfg["fds"]["enabled"]
    hist = __import__("pandas").read_csv(tmp_path / "g" / "history.csv")
    assert "noise_sigma" in hist.columns and hist["noise_sigma"].iloc[-1] != 10.0
    r = iqa("train-head", *common, "--method", "bmc", "--lds", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "--method bmc with --lds is not meaningful" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
    r = iqa("train-head", *common, "--method", "nope", "--out", tmp_path / "n")
    assert r.exit_code == 2 and "nope" in r.output
    r = iqa("train-head", *common, "--method", "ranksim", "--ranksim-rows", "batch", "--out", tmp_path / "r")
    assert r.exit_code == 2 and "batch" in r.output and "label" in r.output and "bin" in r.output
    r = iqa("train-head", *common, "--method", "ranksim", "--ranksim-rows", "bin", "--show-config")
    assert r.exit_code == 0 and '"ranksim_rows": "bin"' in r.output, r.output


# ------------------------------------------------- the deviations' docs

def test_every_deviation_test_is_named_in_method_md_under_the_section_it_names():
    """docs/method.md's "what differs" lists match the tests that show each
    deviation: every test_deviation_* of tests/test_official_*.py is named
    there, after the heading its module's SECTION points to."""
    import importlib
    from pathlib import Path

    from .test_first_look import anchors

    root = Path(__file__).resolve().parents[1]
    doc = root / "docs" / "method.md"
    text = doc.read_text()
    names = []
    for path in sorted((root / "tests").glob("test_official_*.py")):
        mod = importlib.import_module(f"tests.{path.stem}")
        file, _, anchor = mod.SECTION.partition("#")
        assert file == "docs/method.md" and anchor in anchors(doc), mod.SECTION
        heading = next(line for line in text.splitlines() if line.startswith("### ")
                       and anchor in anchors_of(line))
        section = text[text.index(heading):]
        section = section[:section.find("\n### ", 1) if "\n### " in section[1:] else len(section)]
        for name in dir(mod):
            if name.startswith("test_deviation_"):
                names.append(name)
                assert name in section, f"{name} is not named in {mod.SECTION}"
    assert len(names) >= 8


def anchors_of(heading: str) -> set[str]:
    import tempfile
    from pathlib import Path

    from .test_first_look import anchors

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "h.md"
        p.write_text(heading + "\n")
        return anchors(p)
