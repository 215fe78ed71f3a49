"""Bad images never stop a run: each case is either embedded correctly
(converted) or listed in the cache's failure list with its reason, on the
PIL pipeline (in-process and in worker processes) and on the tensor pipeline
(CPU here; the same cases on a GPU are marked ``cuda``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from iqa_cache import cache
from iqa_cache.cli.main import app
from iqa_cache.embed.encoder import (
    EncoderConfig,
    build_transform,
    load_encoder,
    preprocess_for,
    resolve_model_name,
    resolve_weights,
)
from iqa_cache.embed.loop import EmbedConfig, embed
from iqa_cache.sources.datasets import load_csv

from .imagegen import BAD_CASES, write_bad_cases

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
OK = [n for n, (want, _) in BAD_CASES.items() if want == "ok"]
FAILED = [n for n, (want, _) in BAD_CASES.items() if want == "failed"]
# decoded by torchvision on the tensor pipeline (the rest take Pillow's path there too)
TENSOR_DECODED = {"plain.jpg", "gray.jpg", "exif6.jpg", "exif3.jpg", "progressive.jpg", "tiny10.jpg"}


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    write_bad_cases(root / "img")
    lines = ["image,label"] + [f"img/{name},{10 + 3 * i}" for i, name in enumerate(BAD_CASES)]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _manual_rgb(path) -> Image.Image:
    """What each convertible case should become, written out by hand."""
    name = path.name
    im = Image.open(path)
    if name == "exif6.jpg":
        return im.convert("RGB").transpose(Image.Transpose.ROTATE_270)  # orientation 6: turn 90° clockwise
    if name == "exif3.jpg":
        return im.convert("RGB").transpose(Image.Transpose.ROTATE_180)
    if name == "sixteen.png":
        a = np.asarray(im, dtype=np.float64)
        return Image.fromarray((a * 255.0 / 65535.0).round().astype(np.uint8), mode="L").convert("RGB")
    return im.convert("RGB")


def _tiny_encoder(tiny_model):
    name, _ = resolve_model_name(tiny_model)
    weights = resolve_weights(name, "none")
    pre = preprocess_for(name, weights, "squash")
    return load_encoder(EncoderConfig(model=tiny_model, pretrained="none", preprocess=pre), "cpu", weights), pre


@pytest.fixture(scope="module")
def expected_features(bad_root, tiny_model):
    """Features of the hand-converted images, one image per forward pass."""
    encoder, pre = _tiny_encoder(tiny_model)
    tf = build_transform(pre)
    return {n: encoder(tf(_manual_rgb(bad_root / "img" / n))[None]).numpy()[0] for n in OK}


def _check(summary, out, expected, pipeline):
    assert (summary.n_embedded, summary.n_failed) == (len(OK), len(FAILED))
    reasons = dict(cache.failures(out))
    assert set(reasons) == {f"img/{n}" for n in FAILED}
    for n in FAILED:
        assert BAD_CASES[n][1] in reasons[f"img/{n}"], (n, reasons[f"img/{n}"])
    data = cache.load(out)
    assert np.isfinite(data.features).all()
    got = dict(zip(data.image_id, data.features))
    for n in OK:
        a, b = got[f"img/{n}"], expected[n]
        if pipeline == "tensor" and n in TENSOR_DECODED:
            cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
            assert cos > 0.9999, (n, cos)
        else:  # the reference path: the same arithmetic, one image or a batch
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=n)


@pytest.mark.parametrize("pipeline,workers", [("pil", 0), ("pil", 1), ("tensor", 2)])
def test_every_bad_case_is_embedded_or_recorded(bad_root, tiny_model, expected_features, pipeline, workers,
                                                tmp_path):
    m = load_csv(bad_root, bad_root / "labels.csv")
    cfg = EmbedConfig(encoder=EncoderConfig(model=tiny_model, pretrained="none"), device="cpu", batch_size=5,
                      workers=workers, sync=False, pipeline=pipeline)
    out = tmp_path / "bad.h5"
    s = embed(m, cfg, out, progress=False)
    _check(s, out, expected_features, pipeline)
    if pipeline == "tensor":
        assert s.routes["libjpeg"] == len(TENSOR_DECODED)
        assert s.routes["failed"] == len(FAILED)


def test_exif_orientation_changes_the_features(bad_root, tiny_model, expected_features):
    """Guard against a vacuous orientation check: embedding exif6.jpg without
    applying its orientation gives clearly different features."""
    encoder, pre = _tiny_encoder(tiny_model)
    raw = Image.open(bad_root / "img" / "exif6.jpg").convert("RGB")  # as stored, not as displayed
    f = encoder(build_transform(pre)(raw)[None]).numpy()[0]
    assert np.abs(f - expected_features["exif6.jpg"]).max() > 1e-2


def test_cli_finishes_with_summary_and_exit_code_3(bad_root, tiny_model, tmp_path):
    out = tmp_path / "cli.h5"
    args = ["embed", "--dataset", "csv", "--root", str(bad_root), "--csv", str(bad_root / "labels.csv"), "--model",
            tiny_model, "--pretrained", "none", "--device", "cpu", "--workers", "0", "--batch-size", "4", "--out",
            str(out), "--no-progress"]
    r = runner.invoke(app, args)
    assert r.exit_code == 3, r.output
    assert f"{len(OK)} of {len(BAD_CASES)} images embedded, {len(FAILED)} failed" in r.output
    assert r.output.count("  failed: ") == 5 and f"... and {len(FAILED) - 5} more" in r.output
    assert "failed: img/truncated.jpg: cannot decode: image file is truncated" in r.output
    # a rerun finds the cache complete and still reports the failures with the same code
    r = runner.invoke(app, args)
    assert r.exit_code == 3 and "already complete" in r.output, r.output
    assert cache.read_attrs(out)["n_failed"] == len(FAILED)


@pytest.mark.cuda
def test_every_bad_case_on_the_gpu(bad_root, tiny_model, expected_features, tmp_path):
    m = load_csv(bad_root, bad_root / "labels.csv")
    cfg = EmbedConfig(encoder=EncoderConfig(model=tiny_model, pretrained="none"), device="cuda", batch_size=5,
                      sync=False, pipeline="tensor")
    out = tmp_path / "bad-gpu.h5"
    s = embed(m, cfg, out, progress=False)
    assert (s.n_embedded, s.n_failed) == (len(OK), len(FAILED))
    reasons = dict(cache.failures(out))
    for n in FAILED:
        assert BAD_CASES[n][1] in reasons[f"img/{n}"], (n, reasons[f"img/{n}"])
    got = dict(zip(cache.load(out).image_id, cache.load(out).features))
    for n in OK:  # nvJPEG decodes differently from libjpeg in the last bits: compare directions
        a, b = got[f"img/{n}"], expected_features[n]
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999, n
    assert torch.cuda.is_available()
