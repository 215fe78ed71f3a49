"""Stage one: cached embeddings equal OpenCLIP's own features; the cache is
resumable, refuses mismatches and records bad images."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from iqa_cache import cache
from iqa_cache.cli.main import app
from iqa_cache.embed.encoder import EncoderConfig, PreprocessConfig, load_image
from iqa_cache.embed.loop import EmbedConfig, embed
from iqa_cache.errors import CacheError, ConfigError, WeightsUnavailable
from iqa_cache.sources.datasets import load_koniq

runner = CliRunner()


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    """A checkpoint saved from a randomly initialised OpenCLIP ViT-B-32."""
    import open_clip

    torch.manual_seed(1234)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = tmp_path_factory.mktemp("ckpt") / "vit-b-32-random.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
def test_cached_embedding_equals_open_clip_features(vit_checkpoint, koniq_root, tmp_path):
    import open_clip

    out_sq, out_sh = tmp_path / "squash.h5", tmp_path / "shortest.h5"
    for mode, out in (("squash", out_sq), ("shortest", out_sh)):
        r = runner.invoke(app, ["embed", "--dataset", "koniq", "--root", str(koniq_root), "--pretrained",
                                str(vit_checkpoint), "--resize-mode", mode, "--limit", "6", "--batch-size", "4",
                                "--device", "cpu", "--workers", "0", "--out", str(out), "--no-progress"])
        assert r.exit_code == 0, r.output

    model, _, preprocess_shortest = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(vit_checkpoint))
    model.eval()
    model.visual.proj = None
    preprocess_squash = open_clip.image_transform(224, is_train=False, resize_mode="squash")
    m = load_koniq(koniq_root).head(6)
    for out, preprocess in ((out_sq, preprocess_squash), (out_sh, preprocess_shortest)):
        with torch.no_grad():
            want = model.visual(torch.stack([preprocess(Image.open(m.abspath(i))) for i in range(6)])).numpy()
        data = cache.load(out)
        assert data.features.shape == (6, 768)
        assert list(data.image_id) == list(m.image_id)
        np.testing.assert_allclose(data.features, want, rtol=0, atol=1e-5)
        a = data.attrs
        assert a["pretrained_kind"] == "file" and a["feature_dim"] == 768 and a["complete"] is True
        assert a["pretrained_sha256"] and a["feature"].startswith("visual.ln_post(CLS")
    # squash and crop really are different inputs
    assert np.abs(cache.load(out_sq).features - cache.load(out_sh).features).max() > 1e-3


def _embed(manifest, out, tiny_model, **kw):
    cfg = EmbedConfig(encoder=EncoderConfig(model=tiny_model, pretrained="none",
                                            preprocess=PreprocessConfig(resize_mode=kw.pop("resize_mode", "squash"))),
                      device="cpu", batch_size=kw.pop("batch_size", 8), workers=kw.pop("workers", 0), sync=False, **kw)
    return embed(manifest, cfg, out, progress=False)


def test_rerun_is_noop_and_partial_cache_is_completed_bit_identically(koniq_root, tiny_model, tmp_path):
    m = load_koniq(koniq_root)
    full = _embed(m, tmp_path / "a.h5", tiny_model)
    assert full.n_embedded == 40 and full.n_failed == 0 and not full.already_complete
    again = _embed(m, tmp_path / "a.h5", tiny_model)
    assert again.already_complete and again.n_processed_now == 0
    reference = cache.load(tmp_path / "a.h5").features

    # simulate an interruption: two batches never committed
    import shutil

    shutil.copy(tmp_path / "a.h5", tmp_path / "b.h5")
    with h5py.File(tmp_path / "b.h5", "r+") as f:
        f["status"][8:24] = cache.PENDING
        f["embeddings"][8:24] = np.nan
        cache._write_state(f, f.filename, {"complete": False}, sync=False)
    with pytest.raises(CacheError, match=r"incomplete \(16 of 40.*same `iqa embed"):
        cache.load(tmp_path / "b.h5")
    resumed = _embed(m, tmp_path / "b.h5", tiny_model)
    assert resumed.n_processed_now == 16 and resumed.n_embedded == 40
    np.testing.assert_array_equal(cache.load(tmp_path / "b.h5").features, reference)


def test_cache_made_differently_is_refused_and_kept(koniq_root, tiny_model, tmp_path):
    m = load_koniq(koniq_root).head(10)
    out = tmp_path / "c.h5"
    _embed(m, out, tiny_model)
    before = out.read_bytes()
    with pytest.raises(CacheError, match=r"made differently: resize_mode: cache has 'squash', asked for 'shortest'"):
        _embed(m, out, tiny_model, resize_mode="shortest")
    assert out.read_bytes() == before
    more = _embed(load_koniq(koniq_root).head(12), out, tiny_model)  # added rows are embedded, not refused
    assert more.changes == ["2 images added, embedding them"] and more.n_embedded == 12
    _embed(m, out, tiny_model, resize_mode="shortest", overwrite=True)
    assert cache.read_attrs(out)["resize_mode"] == "shortest"


def test_bad_images_are_recorded_not_fatal(koniq_copy, tiny_model, tmp_path):
    m = load_koniq(koniq_copy).head(12)
    imgs = [koniq_copy / p for p in m.path]
    imgs[0].write_bytes(imgs[0].read_bytes()[:300])  # truncated JPEG
    imgs[1].write_bytes(b"")  # zero bytes
    imgs[2].write_text("this is not an image")  # text named .jpg
    imgs[3].unlink()  # missing
    Image.new("L", (40, 30), 128).save(imgs[4], format="JPEG")  # grayscale: converted
    Image.new("RGBA", (10, 10), (255, 0, 0, 128)).save(imgs[5], format="PNG")  # PNG named .jpg, tiny
    s = _embed(m, tmp_path / "bad.h5", tiny_model)
    assert (s.n_embedded, s.n_failed) == (8, 4)
    reasons = dict(cache.failures(tmp_path / "bad.h5"))
    assert set(reasons) == set(m.image_id[:4])
    assert "empty file" in reasons[m.image_id[1]]
    assert "identify" in reasons[m.image_id[2]]
    assert reasons[m.image_id[3]] == "file not found"
    data = cache.load(tmp_path / "bad.h5")
    assert len(data) == 8 and np.isfinite(data.features).all()


def test_load_image_conversions(tmp_path):
    p16 = tmp_path / "16bit.png"
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(p16)
    assert load_image(p16).getpixel((0, 0)) == (255, 255, 255)
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk)
    assert load_image(cmyk).mode == "RGB"
    # EXIF orientation 6 (rotate 90° clockwise to display): a 20x10 image is shown 10x20
    rot = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (20, 10), (0, 128, 0)).save(rot, exif=exif)
    assert load_image(rot).size == (10, 20)


def test_second_writer_is_refused(koniq_root, tiny_model, tmp_path):
    out = tmp_path / "locked.h5"
    with cache.WriterLock(out):
        with pytest.raises(CacheError, match="being written by another"):
            _embed(load_koniq(koniq_root).head(4), out, tiny_model)
    assert not out.exists()


def test_weights_errors(tiny_model):
    from iqa_cache.embed.encoder import resolve_weights

    with pytest.raises(ConfigError, match="valid tags: .*laion2b_s34b_b79k"):
        resolve_weights("ViT-B-32", "laion2b_typo")
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        resolve_weights("ViT-B-32", "/no/such/checkpoint.pt")


def test_offline_tag_fails_without_trying_to_download(monkeypatch):
    import open_clip

    from iqa_cache.embed.encoder import resolve_weights

    def no_download(*a, **k):
        raise AssertionError("must not try to download when the hub is out of reach")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("iqa_cache.embed.encoder._cached_hub_file", lambda repo: None)
    monkeypatch.setattr(open_clip, "download_pretrained", no_download)
    with pytest.raises(WeightsUnavailable, match="out of reach.*--pretrained none"):
        resolve_weights("ViT-B-32", "laion2b_s34b_b79k")
