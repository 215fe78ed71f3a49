"""Stage two's --precision and the shared GEMM: the autocast products and the
one-product first layer against float32 and the batched products, within
the tolerances stated here; auto's choice; the option in the config, the
grid and the CLI."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from iqa_cache.cli.main import app
from iqa_cache.device import resolve_precision
from iqa_cache.errors import ConfigError
from iqa_cache.train.config import FDSConfig, HeadConfig, OptimConfig, TrainConfig
from iqa_cache.train.fit import train_head
from iqa_cache.train.grid import parse_grid
from iqa_cache.train.head import ResidualMLPHead
from iqa_cache.train.stacked import HeadStack, train_stack
from iqa_cache.train.stacked import engine as engine_mod

from . import test_grid

# Tolerances.  fp32, one GEMM against K batched ones: the same sums in
# another order, so float32 rounding only.  bf16 / fp16 products: inputs
# rounded to 8 / 11 significant bits, so about 2^-8 / 2^-11 relative per
# layer, accumulated in float32.
FP32_TOL = dict(rtol=1e-5, atol=1e-5)
AUTOCAST_TOL = {"bf16": dict(rtol=0.05, atol=0.05), "fp16": dict(rtol=0.01, atol=0.01)}
# Their gradients, in relative Frobenius norm (measured: at most 0.03 for
# both, as units whose input rounds to the other side of a ReLU pass another
# gradient).
GRAD_TOL = 0.06


data = test_grid.data  # the fixture: a cache of 600 rows of a learnable problem
BASE = replace(test_grid.BASE, epochs=6)
CHUNKS = TrainConfig.from_flat({"shuffle": "chunks", "chunk_rows": 64}, BASE)


def stack_of(k: int, device: str = "cpu", **kw) -> HeadStack:
    heads = []
    for s in range(k):
        torch.manual_seed(s)
        heads.append(ResidualMLPHead(HeadConfig(in_dim=24, hidden_dim=32, n_blocks=2)))
    return HeadStack.from_heads(heads, device, **kw)


def forward_and_grads(stack: HeadStack, x: torch.Tensor):
    out = stack.output(stack.features(x))
    return out, torch.autograd.grad((out * out).sum(), stack.params)


# ------------------------------------------------------------- shared GEMM

def test_shared_gemm_equals_the_batched_products_forward_and_backward(monkeypatch):
    stack = stack_of(5)
    x = torch.randn(64, 24)
    out_b, grads_b = forward_and_grads(stack_of(5, shared_gemm=False), x)
    calls = []
    real = torch.baddbmm
    monkeypatch.setattr(torch, "baddbmm", lambda *a, **kw: calls.append(a[1].shape) or real(*a, **kw))
    out_s, grads_s = forward_and_grads(stack, x)
    assert all(shape[-1] != 24 for shape in calls)  # the first layer was no batched product
    assert (5, 64, 32) in calls  # the others still are
    torch.testing.assert_close(out_s, out_b, **FP32_TOL)
    for gs, gb in zip(grads_s, grads_b):
        torch.testing.assert_close(gs, gb, **FP32_TOL)
    # and each slice is its head: the first layer stored as nn.Linear's [H, in]
    torch.manual_seed(3)
    head = ResidualMLPHead(HeadConfig(in_dim=24, hidden_dim=32, n_blocks=2))
    torch.testing.assert_close(stack.output(stack.features(x))[3], head(x), **FP32_TOL)
    assert torch.equal(stack.state_dict_of(3)["proj.weight"], head.proj.weight.detach())


def test_per_configuration_inputs_keep_the_batched_products():
    stack = stack_of(3)
    x = torch.randn(3, 40, 24)
    heads = []
    for s in range(3):
        torch.manual_seed(s)
        heads.append(ResidualMLPHead(HeadConfig(in_dim=24, hidden_dim=32, n_blocks=2)))
    out = stack.output(stack.features(x))
    for k in range(3):
        torch.testing.assert_close(out[k], heads[k](x[k]), **FP32_TOL)


def test_adam_steps_on_the_first_layers_gradient_as_laid_out_by_the_batched_products():
    from iqa_cache.train.stacked import GroupedAdam

    stack = stack_of(2, shared_gemm=False)
    _, grads = forward_and_grads(stack, torch.randn(2, 40, 24))
    assert not grads[0].is_contiguous()  # the [K, H, in] weights' gradient of a product with their transpose
    want = [p.detach().clone().requires_grad_(True) for p in stack.params]
    plain = torch.optim.Adam(want, lr=1e-3, foreach=False)
    for p, g in zip(want, grads):
        p.grad = g.clone()
    plain.step()
    GroupedAdam(stack, [replace(BASE, optim=OptimConfig(lr=1e-3))] * 2).step(grads)
    for p, w in zip(stack.params, want):
        torch.testing.assert_close(p, w, **FP32_TOL)


def bmm_only(monkeypatch):
    real = engine_mod.init_stack

    def init(*a, **kw):
        stack = real(*a, **kw)
        stack.shared_gemm = False
        return stack
    monkeypatch.setattr(engine_mod, "init_stack", init)


@pytest.mark.slow
@pytest.mark.parametrize("fds", [False, True], ids=["plain", "fds"])
def test_a_chunked_stack_trains_the_same_with_one_gemm_as_with_batched_products(data, monkeypatch, fds):
    cfgs = [replace(CHUNKS, optim=OptimConfig(lr=lr), fds=FDSConfig(enabled=fds)) for lr in (1e-3, 3e-3, 1e-2)]
    shared = train_stack(data, cfgs)
    bmm_only(monkeypatch)
    batched = train_stack(data, cfgs)
    for a, b in zip(shared, batched):
        assert a.best_epoch == b.best_epoch
        np.testing.assert_allclose([h["train_loss"] for h in a.history], [h["train_loss"] for h in b.history],
                                   rtol=1e-4)
        np.testing.assert_allclose(a.predictions["pred"], b.predictions["pred"], rtol=0, atol=2e-3)
    assert len({round(r.best_val_mae, 4) for r in shared}) == 3  # three different configurations


# -------------------------------------------------------------- precision

@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "bmm"])
def test_autocast_products_are_close_to_fp32_and_return_float32(precision, shared):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    x = torch.randn(64, 24)
    want, want_grads = forward_and_grads(stack_of(4, shared_gemm=shared), x)
    stack = stack_of(4, shared_gemm=shared, dtype=dtype)
    h = stack.features(x)
    out, grads = forward_and_grads(stack, x)
    assert h.dtype == out.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in stack.params) and all(g.dtype == torch.float32 for g in grads)
    assert not torch.equal(out, want)  # really in lower precision
    torch.testing.assert_close(out, want, **AUTOCAST_TOL[precision])
    for g, w in zip(grads, want_grads):  # a few units rounded to the other side of the ReLU: in norm
        assert float((g - w).norm()) <= GRAD_TOL * float(w.norm())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lower_precision_does_not_round_predictions_in_proportion_to_the_labels(precision):
    """The final layer stays float32: a bfloat16 output would round a
    prediction near 90 (labels 0-100) to a step of 0.5, near 3 (1-5) to
    0.016, so the error would grow with the label scale (measured before the
    fix, 16 heads: mean |bf16 - fp32| 0.13 at 90, 0.004 at 3)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    x = torch.randn(512, 24)
    errors = {}
    for mean in (0.5, 3.0, 90.0):  # 0-1, 1-5, 0-100
        want, stack = stack_of(16), stack_of(16, dtype=dtype)
        for s in (want, stack):
            s.params[-1].data.fill_(mean)  # the output bias at the mean label, as init_stack sets it
        errors[mean] = float((stack.predict(x) - want.predict(x)).abs().mean())
    # what is left is the features' rounding (about 2^-8 / 2^-11 of the output's
    # spread, ~0.3 here), the same at every scale
    assert max(errors.values()) < {"bf16": 5e-3, "fp16": 1e-3}[precision]
    assert errors[90.0] == pytest.approx(errors[0.5], rel=0.1)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_in_lower_precision_keeps_float32_state_and_about_the_same_mae(data, precision):
    cfg = replace(CHUNKS, fds=FDSConfig(enabled=True))
    want = train_head(data, cfg)
    res = train_head(data, replace(cfg, precision=precision))
    assert res.config.precision == precision
    assert all(t.dtype == torch.float32 for t in res.head.state_dict().values() if t.is_floating_point())
    assert all(np.isfinite(h["train_loss"]) for h in res.history)
    assert res.predictions["pred"].dtype == np.float64
    # 600 rows, 6 epochs: the test MAE (labels 0-100, about 1.1 here) within 0.3 of float32's
    assert res.metrics["test"]["mae"] == pytest.approx(want.metrics["test"]["mae"], abs=0.3)
    assert res.metrics["test"]["mae"] != want.metrics["test"]["mae"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_balanced_mse_learns_its_noise_sigma_in_lower_precision(data, precision):
    cfg = TrainConfig.from_flat({"method": "bmc", "epochs": 3, "precision": precision}, BASE)
    want, res = train_head(data, replace(cfg, precision="fp32")), train_head(data, cfg)
    sigmas = [h["noise_sigma"] for h in res.history]
    assert all(np.isfinite(sigmas)) and sigmas[-1] != cfg.method.bmse_sigma  # the unscaled gradient moved it
    np.testing.assert_allclose(sigmas, [h["noise_sigma"] for h in want.history], rtol=0.05)


def test_fp16_loss_scale_skips_an_overflowing_step_and_halves():
    from iqa_cache.train.stacked.optim import LossScale

    s = LossScale(scale=8.0, growth_interval=2)
    grads = [torch.full((2, 3), 8.0), torch.full((2,), 16.0)]
    assert s.unscale(grads, torch.tensor([1.0, 2.0])) and torch.equal(grads[0], torch.ones(2, 3))
    assert s.unscale([torch.ones(2, 3)], torch.ones(2)) and s.scale == 16.0  # grown after 2 good steps
    bad = [torch.tensor([[1.0, float("inf")], [1.0, 1.0]])]
    assert not s.unscale(bad, torch.ones(2)) and s.scale == 8.0 and s.skipped == 1
    diverged = [torch.tensor([[1.0, float("nan")], [1.0, 1.0]])]
    assert s.unscale(diverged, torch.tensor([float("nan"), 1.0]))  # its own loss is NaN: diverged, not overflow


def cpu_as(monkeypatch, *, amx: bool, avx512_bf16: bool, capability: str = "AVX512", onednn: str | None = None):
    """Make this CPU look like another to resolve_precision."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    if onednn is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn)


@pytest.mark.parametrize("cpu, want", [
    (dict(amx=False, avx512_bf16=False), "fp32"),  # AVX-512 or AVX2 alone: bf16 converted in software
    (dict(amx=True, avx512_bf16=True), "bf16"),  # Sapphire Rapids
    (dict(amx=True, avx512_bf16=True, onednn="AVX2"), "fp32"),  # AMX there, but oneDNN kept from it
    (dict(amx=True, avx512_bf16=True, onednn="AVX512_CORE_AMX"), "bf16"),
    (dict(amx=False, avx512_bf16=True), "bf16"),  # Zen 4, Cooper Lake: measured 1.6-1.9x
    (dict(amx=False, avx512_bf16=True, capability="AVX2"), "fp32"),  # ATEN_CPU_CAPABILITY=avx2: measured 7-14x slower
    (dict(amx=False, avx512_bf16=True, onednn="AVX2"), "fp32"),
    (dict(amx=False, avx512_bf16=True, onednn="AVX512_CORE"), "fp32"),
    (dict(amx=False, avx512_bf16=True, onednn="avx512_core_bf16"), "bf16"),
    (dict(amx=False, avx512_bf16=True, onednn="ALL"), "bf16"),
], ids=["plain", "amx", "amx-capped", "amx-allowed", "avx512-bf16", "aten-avx2", "onednn-avx2",
        "onednn-avx512-core", "onednn-bf16", "onednn-all"])
def test_auto_picks_bf16_only_where_the_cpu_runs_it_fast(monkeypatch, cpu, want):
    cpu_as(monkeypatch, **cpu)
    assert resolve_precision("auto", "cpu") == want
    assert resolve_precision("fp16", "cpu") == "fp16" and resolve_precision("fp32", "cpu") == "fp32"


def test_auto_on_this_machine_follows_its_real_flags(monkeypatch):
    """No mocks: what torch reports of this CPU and the environment decide."""
    import iqa_cache.device as d

    want = "bf16" if d.cpu_has_amx() or d.cpu_has_avx512_bf16() else "fp32"
    assert resolve_precision("auto", "cpu") == want
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert resolve_precision("auto", "cpu") == "fp32"


def test_an_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="'fp8' is not one of fp32, bf16, fp16, auto"):
        resolve_precision("fp8", "cpu")


def test_the_run_records_the_precision_it_ran_with(data, monkeypatch):
    cpu_as(monkeypatch, amx=False, avx512_bf16=False)
    assert train_head(data, replace(BASE, epochs=1, precision="auto")).config.precision == "fp32"
    cpu_as(monkeypatch, amx=False, avx512_bf16=True)
    assert train_head(data, replace(BASE, epochs=1, precision="auto")).config.precision == "bf16"


def test_precision_is_an_option_a_grid_key_and_checked():
    assert TrainConfig().precision == "fp32"
    assert TrainConfig.from_flat({"precision": "bf16"}).precision == "bf16"
    with pytest.raises(ConfigError, match="--precision 'half' is not one of fp32, bf16, fp16, auto"):
        TrainConfig(precision="half")
    assert parse_grid("precision=fp32,bf16").axes == (("precision", ("fp32", "bf16")),)
    with pytest.raises(ConfigError, match="grid precision='fp8' is not valid: use one of fp32, bf16, fp16, auto"):
        parse_grid("precision=fp8")


def test_cli_precision_for_train_head_and_ablate(data):
    runner = CliRunner()
    r = runner.invoke(app, ["train-head", "--cache", str(data.path), "--precision", "bf16", "--show-config"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["train"]["precision"] == "bf16"
    r = runner.invoke(app, ["train-head", "--cache", str(data.path), "--precision", "fp8", "--show-config"])
    assert r.exit_code == 2 and "fp8" in r.output and "bf16" in r.output
    r = runner.invoke(app, ["ablate", "--help"])
    assert "--precision" in r.output and "precision" in r.output.split("Keys:")[1]


@pytest.mark.parametrize("avx512_bf16, want", [(True, "bf16 (this CPU has AVX-512 bfloat16)"),
                                                (False, "fp32 (no AMX or AVX-512 bfloat16")])
def test_cli_says_what_auto_chose_and_why(data, tmp_path, monkeypatch, avx512_bf16, want):
    cpu_as(monkeypatch, amx=False, avx512_bf16=avx512_bf16)
    r = CliRunner().invoke(app, ["train-head", "--cache", str(data.path), "--precision", "auto", "--epochs", "1",
                                 "--out", str(tmp_path / "run"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert f"--precision auto: {want}" in r.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["precision"] == want.split()[0]


# -------------------------------------------------------------------- CUDA

@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_autocast_and_shared_gemm_match_fp32_bmm(precision):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    x = torch.randn(64, 24, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    want, _ = forward_and_grads(stack_of(4, "cuda", shared_gemm=False), x)
    shared, _ = forward_and_grads(stack_of(4, "cuda"), x)
    torch.testing.assert_close(shared, want, **FP32_TOL)
    low, grads = forward_and_grads(stack_of(4, "cuda", dtype=dtype), x)
    assert low.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    torch.testing.assert_close(low, want, **AUTOCAST_TOL[precision])


@pytest.mark.cuda
def test_cuda_auto_is_bf16_where_supported(data):
    want = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    assert resolve_precision("auto", "cuda") == want
    res = train_head(data, replace(CHUNKS, device="cuda", precision="auto"))
    assert res.config.precision == want
