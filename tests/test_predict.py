"""`iqa predict` end to end on a tiny-model cache: scores equal the head
applied to the cached features of the same images, unreadable images are
skipped, and weights that are missing or differ are refused."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from iqa_cache import cache
from iqa_cache.cli.main import app
from iqa_cache.errors import ConfigError, WeightsUnavailable
from iqa_cache.predict import run_weights
from iqa_cache.train.runs import load_head

runner = CliRunner()


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_model, tmp_path_factory):
    """A checkpoint file of the tiny OpenCLIP model (seeded random weights)."""
    import open_clip

    from iqa_cache.embed.encoder import resolve_model_name

    name, _ = resolve_model_name(tiny_model)
    torch.manual_seed(7)
    model = open_clip.create_model(name, pretrained=None)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


def _embed_and_train(root, tiny_model, pretrained, work):
    h5, run = work / "feats.h5", work / "run"
    r = iqa("embed", "--dataset", "koniq", "--root", root, "--model", tiny_model, "--pretrained", pretrained,
            "--device", "cpu", "--workers", 0, "--batch-size", 16, "--out", h5, "--no-progress")
    assert r.exit_code == 0, r.output
    r = iqa("train-head", "--cache", h5, "--epochs", 20, "--hidden", 16, "--lr", "0.01", "--device", "cpu",
            "--out", run, "--no-progress")
    assert r.exit_code == 0, r.output
    return h5, run


@pytest.fixture(scope="module")
def file_run(koniq_root, tiny_model, tiny_ckpt, tmp_path_factory):
    return _embed_and_train(koniq_root, tiny_model, tiny_ckpt, tmp_path_factory.mktemp("file_run"))


def head_on_cache(h5, run) -> dict[str, float]:
    data = cache.load(h5)
    head = load_head(run)
    with torch.no_grad():
        s = head(torch.from_numpy(data.features)).double().numpy()
    return dict(zip(data.image_id, s))


def test_scores_equal_the_head_on_cached_features(file_run, koniq_root, tmp_path):
    h5, run = file_run
    out = tmp_path / "scores.csv"
    r = iqa("predict", "--run", run, "--dir", koniq_root / "512x384", "--out", out, "--device", "cpu",
            "--batch-size", 7, "--no-progress")
    assert r.exit_code == 0, r.output
    assert f"wrote 40 scores to {out}" in r.stderr
    df = pd.read_csv(out)
    assert list(df.columns) == ["path", "score"] and len(df) == 40
    assert df["score"].is_monotonic_decreasing  # best first
    want = head_on_cache(h5, run)
    got = {p.split("/")[-1]: s for p, s in zip(df["path"], df["score"])}
    assert set(got) == set(want)
    spread = np.std(list(want.values()))
    assert spread > 1e-3  # the scores differ between images, so equality means something
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=0, atol=1e-5)


def test_a_ridge_run_scores_like_its_linear_head(file_run, koniq_root, tmp_path):
    h5, _ = file_run
    run = tmp_path / "ridge"
    r = iqa("train-head", "--cache", h5, "--method", "ridge", "--split-seed", 1, "--out", run, "--no-progress")
    assert r.exit_code == 0, r.output
    out = tmp_path / "scores.csv"
    r = iqa("predict", "--run", run, "--dir", koniq_root / "512x384", "--out", out, "--device", "cpu",
            "--no-progress")
    assert r.exit_code == 0, r.output
    want = head_on_cache(h5, run)
    got = {p.split("/")[-1]: s for p, s in pd.read_csv(out).itertuples(index=False)}
    assert np.std(list(want.values())) > 1e-3
    np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=0, atol=1e-4)


def test_image_arguments_and_unreadable_images_are_skipped(file_run, koniq_root, tmp_path):
    h5, run = file_run
    imgs = sorted((koniq_root / "512x384").glob("*.jpg"))[:3]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    r = iqa("predict", "--run", run, *imgs, tmp_path / "broken.jpg", tmp_path / "missing.jpg", "--device", "cpu",
            "--no-progress")
    assert r.exit_code == 3, r.output
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "path,score" and len(lines) == 4
    assert {line.split(",")[0] for line in lines[1:]} == {str(p) for p in imgs}
    assert "broken.jpg" in r.stderr and "missing.jpg: file not found" in r.stderr
    assert "2 image(s) could not be read and were skipped" in r.stderr
    want = head_on_cache(h5, run)
    for line in lines[1:]:
        p, s = line.split(",")
        assert float(s) == pytest.approx(want[p.split("/")[-1]], abs=1e-5)


def test_weights_that_differ_or_are_missing_are_refused(file_run, koniq_root, tiny_ckpt, tmp_path):
    _, run = file_run
    img = sorted((koniq_root / "512x384").glob("*.jpg"))[0]
    # a moved checkpoint (same bytes elsewhere) is accepted
    moved = tmp_path / "moved.pt"
    shutil.copy(tiny_ckpt, moved)
    r = iqa("predict", "--run", run, img, "--pretrained", moved, "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    # other weights of the same model are refused: wrong checksum
    state = torch.load(tiny_ckpt, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 0.01
    other = tmp_path / "other.pt"
    torch.save(state, other)
    r = iqa("predict", "--run", run, img, "--pretrained", other, "--device", "cpu", "--no-progress")
    assert r.exit_code == 2
    assert "SHA-256" in r.stderr and "differs from" in r.stderr and "Traceback" not in r.output
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: --pretrained {other}: SHA-256") and r.stdout == ""
    # the recorded checkpoint is gone: say so and how to fix it
    gone = tmp_path / "gone_run"
    shutil.copytree(run, gone)
    cfg = json.loads((gone / "config.json").read_text())
    cfg["cache"]["pretrained"] = str(tmp_path / "nowhere" / "tiny.pt")
    (gone / "config.json").write_text(json.dumps(cfg))
    r = iqa("predict", "--run", gone, img, "--device", "cpu", "--no-progress")
    assert r.exit_code == 2 and "is not there; pass --pretrained PATH" in r.stderr
    # random weights are no stand-in for a checkpoint
    r = iqa("predict", "--run", run, img, "--pretrained", "none", "--device", "cpu", "--no-progress")
    assert r.exit_code == 2 and "random weights would give different features" in r.stderr


def test_tag_weights_that_cannot_be_had_are_refused(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rec = {"pretrained_kind": "tag", "pretrained": "laion2b_s34b_b79k", "pretrained_sha256": "0" * 64}
    with pytest.raises(WeightsUnavailable):  # not downloadable here, or (if cached) not these bytes
        run_weights(rec, "ViT-B-32")
    with pytest.raises(WeightsUnavailable, match="no SHA-256"):
        run_weights({**rec, "pretrained_sha256": ""}, "ViT-B-32")


def test_random_weight_runs_are_reproducible_with_a_warning(koniq_root, tiny_model, tmp_path):
    h5, run = _embed_and_train(koniq_root, tiny_model, "none", tmp_path)
    r = iqa("predict", "--run", run, "--dir", koniq_root / "512x384", "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "randomly initialised encoder (--pretrained none)" in r.stderr
    df = pd.read_csv(io.StringIO(r.stdout))
    want = head_on_cache(h5, run)
    np.testing.assert_allclose([want[p.split("/")[-1]] for p in df["path"]], df["score"], atol=1e-5)
    with pytest.raises(ConfigError, match="random weights"):
        run_weights({"pretrained_kind": "none"}, "x", "/some/file.pt")


def test_usage_errors(file_run, koniq_root, tmp_path):
    _, run = file_run
    r = iqa("predict", "--run", run)
    assert r.exit_code == 2 and "pass image files, --dir or --shards (exactly one of them)" in r.output
    img = sorted((koniq_root / "512x384").glob("*.jpg"))[0]
    r = iqa("predict", "--run", run, img, "--dir", koniq_root)
    assert r.exit_code == 2 and "exactly one" in r.output
    (tmp_path / "empty").mkdir()
    r = iqa("predict", "--run", run, "--dir", tmp_path / "empty")
    assert r.exit_code == 2 and "no image files" in r.stderr
    r = iqa("predict", "--run", tmp_path / "norun", img)
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_webdataset_shards_score_like_the_files_and_parquet_equals_csv(file_run, koniq_root, tmp_path):
    """--shards reads the images from tar members: the same scores as the
    files; --out *.parquet holds the same table as the CSV (full float64)."""
    import pandas as pd

    pytest.importorskip("pyarrow")

    from .wdsgen import write_shards

    _, run = file_run
    pattern, folder, csv = write_shards(koniq_root, tmp_path / "shards", per_shard=16)
    key_to_image = dict(zip(pd.read_csv(csv, dtype=str)["key"], pd.read_csv(csv, dtype=str)["image"]))
    r = iqa("predict", "--run", run, "--dir", folder, "--out", tmp_path / "files.csv", "--device", "cpu",
            "--no-progress")
    assert r.exit_code == 0, r.output
    r = iqa("predict", "--run", run, "--shards", pattern, "--out", tmp_path / "wds.parquet", "--device", "cpu",
            "--no-progress")
    assert r.exit_code == 0, r.output
    r2 = iqa("predict", "--run", run, "--shards", pattern, "--out", tmp_path / "wds.csv", "--device", "cpu",
             "--no-progress")
    assert r2.exit_code == 0, r2.output
    files = pd.read_csv(tmp_path / "files.csv")
    pq = pd.read_parquet(tmp_path / "wds.parquet")
    assert list(pq.columns) == ["path", "score"] and len(pq) == len(files) == 40
    assert pq["path"].iloc[0].startswith("0000") and ".tar/" in pq["path"].iloc[0]
    by_file = dict(zip(files["path"].map(lambda p: p.split("/")[-1]), files["score"]))
    got = {key_to_image[p.split("/")[-1].split(".")[0]]: s for p, s in zip(pq["path"], pq["score"])}
    np.testing.assert_allclose([got[k] for k in by_file], list(by_file.values()), atol=1e-6)
    csv_scores = pd.read_csv(tmp_path / "wds.csv")
    assert list(csv_scores["path"]) == list(pq["path"])
    np.testing.assert_allclose(csv_scores["score"], pq["score"], atol=1e-6)
