"""The tensor pipeline: JPEG headers, EXIF orientation, tensor preprocessing
and features against OpenCLIP's own PIL path, on the CPU (the same code runs
on a GPU except for nvJPEG; GPU-only checks are marked ``cuda``)."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_cache import cache
from iqa_cache.embed.commit import AsyncCommitter
from iqa_cache.embed.decode import jpeg_decoder, resolve_decoder, torchcodec_available
from iqa_cache.embed.encoder import EncoderConfig, PreprocessConfig, build_transform, load_image
from iqa_cache.embed.jpeg import parse_header
from iqa_cache.embed.loop import EmbedConfig, embed
from iqa_cache.embed.pipeline import TensorLoader
from iqa_cache.embed.tensorprep import TensorPreprocess, crop_box, orient, resized_size
from iqa_cache.errors import CacheError, ConfigError
from iqa_cache.sources.datasets import load_koniq

from .imagegen import exif_with_orientation, jpeg_bytes, photo


def _decode(data: bytes) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ------------------------------------------------------------------ headers

def test_header_of_plain_progressive_gray_cmyk_and_broken_files():
    img = photo(64, 48)
    h = parse_header(jpeg_bytes(img))
    assert (h.width, h.height, h.components, h.precision, h.sof, h.orientation) == (64, 48, 3, 8, 0xC0, 1)
    assert h.tensor_ok and not h.progressive
    p = parse_header(jpeg_bytes(img, progressive=True))
    assert p.progressive and p.tensor_ok
    g = parse_header(jpeg_bytes(img.convert("L")))
    assert g.components == 1 and g.tensor_ok
    c = parse_header(jpeg_bytes(img.convert("CMYK")))
    assert c.components == 4 and not c.tensor_ok and "CMYK" in c.why_not
    data = jpeg_bytes(img)
    t = parse_header(data[: len(data) // 2])
    assert t is not None and not t.tensor_ok and "truncated" in t.why_not
    assert parse_header(data + b"\x00\x00\n").tensor_ok  # trailing padding is fine
    assert parse_header(b"\x89PNG\r\n\x1a\n" + data) is None
    assert parse_header(b"") is None and parse_header(data[:40]) is None


@pytest.mark.parametrize("orientation", range(1, 9))
def test_header_orientation_and_orient_match_pillow(orientation, tmp_path):
    img = photo(40, 24, seed=orientation)
    data = jpeg_bytes(img, exif=exif_with_orientation(orientation))
    h = parse_header(data)
    assert h.tensor_ok
    with Image.open(io.BytesIO(data)) as im:
        assert h.orientation == im.getexif().get(0x0112, 1) == orientation
    path = tmp_path / "o.jpg"
    path.write_bytes(data)
    want = np.asarray(load_image(path))  # Pillow decode + ImageOps.exif_transpose
    got = orient(_decode(data), h.orientation).permute(1, 2, 0).numpy()
    assert got.shape == want.shape == ((24, 40, 3) if orientation < 5 else (40, 24, 3))
    np.testing.assert_array_equal(got, want)  # same libjpeg, same transposition: bit-identical
    assert h.oriented_size == want.shape[:2]


def test_xmp_orientation_goes_to_pillow():
    buf = io.BytesIO()
    photo(20, 10).save(buf, format="JPEG", xmp=b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>')
    if b"http://ns.adobe.com/xap/1.0/" not in buf.getvalue():
        pytest.skip(f"Pillow {Image.__version__} does not write XMP into JPEGs")
    h = parse_header(buf.getvalue())
    assert not h.tensor_ok and "XMP" in h.why_not


# ----------------------------------------------------------- preprocessing

def test_geometry_matches_torchvision():
    from torchvision.transforms.functional import _compute_resized_output_size

    pre = PreprocessConfig(resize_mode="shortest")
    for h, w in [(768, 1024), (1024, 768), (384, 512), (10, 10), (225, 224), (7, 500), (500, 7), (333, 999)]:
        assert list(resized_size(h, w, pre)) == _compute_resized_output_size((h, w), [224])
        rh, rw = resized_size(h, w, pre)
        top, left = crop_box(rh, rw, 224)
        assert (top, left) == (int(round((rh - 224) / 2.0)), int(round((rw - 224) / 2.0)))
    assert resized_size(768, 1024, PreprocessConfig(resize_mode="squash")) == (224, 224)


@pytest.mark.parametrize("mode", ["squash", "shortest"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_tensor_preprocess_matches_open_clip_pixels(mode, interpolation, tmp_path):
    """Same pixels as OpenCLIP's transform up to one 8-bit level on rare
    pixels (bicubic; bilinear upscaling: two), for down- and up-scaling, odd
    sizes and aspect ratios, including tall images that Pillow 13 resizes
    vertically first."""
    pre = PreprocessConfig(resize_mode=mode, interpolation=interpolation)
    reference, prep = build_transform(pre), TensorPreprocess(pre, "cpu")
    std = torch.tensor(pre.std).view(3, 1, 1)
    sizes = [(512, 384), (300, 451), (10, 10), (224, 224), (640, 97), (225, 224), (17, 31), (260, 900)]
    max_levels, max_fraction = (1, 0.001) if interpolation == "bicubic" else (2, 0.02)
    images, want = [], []
    for k, (w, h) in enumerate(sizes):
        path = tmp_path / f"{k}.jpg"
        path.write_bytes(jpeg_bytes(photo(w, h, seed=k)))
        images.append(_decode(path.read_bytes()))
        want.append(reference(load_image(path)))
    got = prep(images)
    assert got.shape == (len(sizes), 3, 224, 224) and got.dtype == torch.float32
    for k in range(len(sizes)):
        levels = ((got[k] - want[k]) * std * 255).abs()  # difference in 8-bit levels
        assert levels.max() <= max_levels + 1e-3, (sizes[k], float(levels.max()))
        assert (levels > 0.5).float().mean() < max_fraction, sizes[k]


def test_pass_order_follows_pillow():
    from iqa_cache.embed.tensorprep import pillow_may_resize_vertically_first, vertical_first

    rng = np.random.default_rng(0)
    for w, h, tw, th in [(300, 451, 224, 224), (400, 500, 224, 224), (100, 451, 224, 224), (154, 158, 100, 50),
                         (165, 330, 50, 100), (900, 260, 224, 224)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        full = np.asarray(img.resize((tw, th), Image.Resampling.BICUBIC))
        first = (w, th) if vertical_first(h, w, th, tw) else (tw, h)
        two = np.asarray(img.resize(first, Image.Resampling.BICUBIC).resize((tw, th), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(full, two, err_msg=str((w, h, tw, th)))
    assert isinstance(pillow_may_resize_vertically_first(), bool)


def test_tensor_preprocess_rejects_wrong_input():
    with pytest.raises(ValueError, match=r"uint8 \(3, H, W\)"):
        TensorPreprocess(PreprocessConfig())([torch.zeros(1, 8, 8, dtype=torch.uint8)])


@pytest.mark.slow
def test_tensor_pipeline_features_match_open_clip_vit_b32(koniq_root, tmp_path):
    """The fidelity bar on the real architecture: ViT-B-32 (seeded random
    weights), fp32, tensor pipeline vs the PIL reference: cosine >= 0.999 for
    every image (measured: > 0.99999)."""
    m = load_koniq(koniq_root).head(6)
    feats = {}
    for pipeline in ("pil", "tensor"):
        for mode in ("squash", "shortest"):
            cfg = EmbedConfig(encoder=EncoderConfig(model="ViT-B-32", pretrained="none",
                                                    preprocess=PreprocessConfig(resize_mode=mode)),
                              device="cpu", batch_size=6, workers=0 if pipeline == "pil" else 2, sync=False,
                              pipeline=pipeline)
            out = tmp_path / f"{pipeline}-{mode}.h5"
            embed(m, cfg, out, progress=False)
            feats[pipeline, mode] = cache.load(out).features
    for mode in ("squash", "shortest"):
        cos = _cos(feats["pil", mode], feats["tensor", mode])
        assert cos.min() >= 0.999, cos
        assert cos.min() >= 0.99999  # what it actually is: a regression would show here first


# ------------------------------------------------------- the pipeline itself

def _cfg(tiny_model, **kw):
    return EmbedConfig(encoder=EncoderConfig(model=tiny_model, pretrained="none",
                                             preprocess=PreprocessConfig(resize_mode=kw.pop("resize_mode", "squash"))),
                       device="cpu", batch_size=kw.pop("batch_size", 8), workers=kw.pop("workers", 2), sync=False,
                       **kw)


needs_torchcodec = pytest.mark.skipif(bool(torchcodec_available()), reason="TorchCodec is not usable here")
DECODER_PARAMS = [pytest.param("torchcodec", marks=needs_torchcodec), "torchvision"]


@pytest.mark.slow
@pytest.mark.parametrize("decoder", DECODER_PARAMS)
def test_tensor_pipeline_end_to_end_equals_reference(koniq_root, tiny_model, tmp_path, decoder):
    m = load_koniq(koniq_root).head(20)
    ref = embed(m, _cfg(tiny_model, pipeline="pil", workers=0), tmp_path / "pil.h5", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the torchvision fallback's warning is handled
        s = embed(m, _cfg(tiny_model, pipeline="tensor", decoder=decoder), tmp_path / "tensor.h5", progress=False)
    assert (s.n_embedded, s.n_failed, s.pipeline, s.routes) == (20, 0, "tensor", {"libjpeg": 20})
    attrs = cache.read_attrs(tmp_path / "tensor.h5")
    assert ref.pipeline == "pil" and attrs["pipeline"] == "tensor" and attrs["jpeg_decoder"] == decoder
    cos = _cos(cache.load(tmp_path / "pil.h5").features, cache.load(tmp_path / "tensor.h5").features)
    assert cos.min() > 0.9999
    # deterministic: the same run again gives the same bits
    embed(m, _cfg(tiny_model, pipeline="tensor", workers=1, decoder=decoder), tmp_path / "tensor2.h5",
          progress=False)
    np.testing.assert_array_equal(cache.load(tmp_path / "tensor.h5").features,
                                  cache.load(tmp_path / "tensor2.h5").features)


@needs_torchcodec
def test_torchcodec_and_torchvision_decode_the_same_pixels_as_pillow(tmp_path):
    """Baseline, progressive, grayscale and odd-sized JPEGs: both decoders
    give Pillow's pixels bit for bit; EXIF-rotated ones: TorchCodec applies
    the orientation itself, as Pillow's exif_transpose does (torchvision does
    not); both refuse broken data with RuntimeError (which sends the image to
    Pillow)."""
    _, tc = jpeg_decoder("torchcodec")
    _, tv = jpeg_decoder("torchvision")
    img = photo(61, 37, seed=5)
    cases = [jpeg_bytes(img), jpeg_bytes(img, progressive=True), jpeg_bytes(img.convert("L")),
             jpeg_bytes(photo(333, 17, seed=2))]
    for k, data in enumerate(cases):
        want = load_image(data, exif_transpose=False)
        t = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        for decode in (tc, tv):
            np.testing.assert_array_equal(decode(t).permute(1, 2, 0).numpy(), np.asarray(want))
    for o in range(1, 9):
        data = jpeg_bytes(img, exif=exif_with_orientation(o))
        t = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        np.testing.assert_array_equal(tc(t).permute(1, 2, 0).numpy(), np.asarray(load_image(data)))
        np.testing.assert_array_equal(tv(t).permute(1, 2, 0).numpy(),
                                      np.asarray(load_image(data, exif_transpose=False)))
    for decode in (tc, tv):
        with pytest.raises(RuntimeError):
            decode(torch.frombuffer(bytearray(b"\xff\xd8not a jpeg" * 8), dtype=torch.uint8))
    assert resolve_decoder("auto") == "torchcodec"


@pytest.mark.parametrize("decoder", DECODER_PARAMS)
@pytest.mark.parametrize("exif_transpose", [True, False])
def test_tensor_loader_orients_once_with_either_decoder(decoder, exif_transpose, tmp_path):
    """EXIF-rotated JPEGs through the tensor loader give Pillow's pixels,
    with the EXIF orientation applied or not, whichever decoder runs."""
    pre = PreprocessConfig(exif_transpose=exif_transpose)
    names = []
    for o in range(1, 9):
        (tmp_path / f"{o}.jpg").write_bytes(jpeg_bytes(photo(40, 24, seed=o), exif=exif_with_orientation(o)))
        names.append(f"{o}.jpg")
    with TensorLoader(tmp_path, np.array(names, dtype=object), pre, "cpu", workers=1, decoder=decoder) as loader:
        for it in [f.result() for f in loader.submit(np.arange(8))]:
            want = load_image(it.path, exif_transpose=exif_transpose)
            if it.pixels is not None:
                np.testing.assert_array_equal(it.pixels.permute(1, 2, 0).numpy(), np.asarray(want))
            else:  # sent to the reference path
                assert it.route == "pil" and decoder == "torchcodec" and not exif_transpose


def test_torchcodec_missing_falls_back_to_torchvision(monkeypatch):
    import iqa_cache.embed.decode as dec

    monkeypatch.setattr(dec, "torchcodec_available", lambda: "ImportError: No module named 'torchcodec'")
    assert dec.resolve_decoder("auto") == "torchvision"
    with pytest.raises(ConfigError, match="--decoder torchcodec: TorchCodec cannot be used here"):
        dec.resolve_decoder("torchcodec")
    with pytest.raises(ConfigError, match="--decoder 'nvjpeg' is not one of auto, torchcodec, torchvision"):
        EmbedConfig(decoder="nvjpeg")


def test_device_decoder_failures_fall_back_per_image(koniq_root, monkeypatch):
    """The GPU branch (batched decode, per-image retry, CPU decode) exercised
    on the CPU: the 'device' decoder refuses the batch, then one image; that
    image is decoded by libjpeg instead and nothing is lost."""
    import iqa_cache.embed.pipeline as pl

    m = load_koniq(koniq_root).head(4)
    calls = []

    def fake(data, device="cpu"):
        if device != "fake-gpu":
            return real(data)
        calls.append(len(data) if isinstance(data, list) else 1)
        if isinstance(data, list) or data.numel() == refused:
            raise RuntimeError("nvjpeg says no")
        return real(data)

    with TensorLoader(m.root, m.path, PreprocessConfig(), "cpu", workers=2) as loader:
        loader.device_decode, loader.decode_device = True, "fake-gpu"
        loaded = [f.result() for f in loader.submit(np.arange(4))]
        assert all(it.jpeg is not None and it.route == pl.NVJPEG for it in loaded)
        refused = loaded[2].jpeg.numel()
        real = loader.decode
        monkeypatch.setattr(loader, "decode", fake)
        x, ok, reasons = loader.assemble(loaded)
    assert calls == [4, 1, 1, 1, 1]  # one batched call, then one by one
    assert [it.route for it in loaded] == [pl.NVJPEG, pl.NVJPEG, pl.LIBJPEG, pl.NVJPEG]
    assert ok.all() and reasons == [""] * 4 and x.shape == (4, 3, 224, 224)
    for it, p in zip(loaded, m.path):
        np.testing.assert_array_equal(it.pixels.permute(1, 2, 0).numpy(), np.asarray(load_image(m.root / p)))
    assert loader.routes == {pl.NVJPEG: 3, pl.LIBJPEG: 1}


def test_auto_pipeline_follows_the_cache_and_explicit_mismatch_is_refused(koniq_root, tiny_model, tmp_path):
    import h5py

    m = load_koniq(koniq_root).head(16)
    out = tmp_path / "t.h5"
    embed(m, _cfg(tiny_model, pipeline="tensor"), out, progress=False)
    with h5py.File(out, "r+") as f:  # an interrupted run: the second batch never committed
        f["status"][8:16] = cache.PENDING
        cache._write_state(f, f.filename, {"complete": False}, sync=False)
    with pytest.raises(CacheError, match=r"pipeline: cache has 'tensor', asked for 'pil'; resume it with "
                                         r"--pipeline tensor \(every pipeline runs on a CPU too\), pass another"):
        embed(m, _cfg(tiny_model, pipeline="pil"), out, progress=False)
    s = embed(m, _cfg(tiny_model, pipeline="auto"), out, progress=False)  # auto on a CPU would pick pil
    assert s.pipeline == "tensor" and s.n_processed_now == 8 and s.n_embedded == 16
    # a complete cache is complete whatever pipeline is asked for
    assert embed(m, _cfg(tiny_model, pipeline="pil"), out, progress=False).already_complete


def test_draft_is_opt_in_recorded_and_close(koniq_root, tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="--draft applies to the pil pipeline only"):
        _cfg(tiny_model, pipeline="tensor", draft=True)
    m = load_koniq(koniq_root).head(8)
    embed(m, _cfg(tiny_model, pipeline="pil", workers=0), tmp_path / "full.h5", progress=False)
    s = embed(m, _cfg(tiny_model, pipeline="auto", draft=True, workers=0), tmp_path / "draft.h5", progress=False)
    assert s.pipeline == "pil-draft" and cache.read_attrs(tmp_path / "draft.h5")["pipeline"] == "pil-draft"
    a, b = cache.load(tmp_path / "full.h5").features, cache.load(tmp_path / "draft.h5").features
    assert not np.array_equal(a, b)  # draft decoding really is a different input
    assert _cos(a, b).min() > 0.99


def test_load_image_draft_decodes_at_reduced_scale(tmp_path):
    p = tmp_path / "big.jpg"
    p.write_bytes(jpeg_bytes(photo(1024, 768)))
    assert load_image(p).size == (1024, 768)
    assert load_image(p, draft=(224, 224)).size == (512, 384)  # the smallest scale still >= 224 both ways
    png = tmp_path / "x.png"
    photo(300, 300).save(png)
    assert load_image(png, draft=(224, 224)).size == (300, 300)  # draft is for JPEGs only


def test_async_committer_commits_in_order_and_reports_errors():
    class Writer:
        def __init__(self):
            self.rows = []

        def commit(self, start, emb, status, reasons):
            if start == 99:
                raise OSError("disk full")
            self.rows.append(start)

    w = Writer()
    seen = []
    c = AsyncCommitter(w, depth=1, on_commit=seen.append)
    for start in (0, 4, 8):
        c.put(start, np.zeros((4, 2), np.float32), np.ones(4, np.int8), [""] * 4)
    c.close()
    assert w.rows == [0, 4, 8] and seen == [4, 4, 4] and c.n_committed == 12
    c = AsyncCommitter(Writer())
    c.put(99, np.zeros((1, 2), np.float32), np.ones(1, np.int8), [""])
    with pytest.raises(OSError, match="disk full"):
        c.close()


# ------------------------------------------------------------------- GPU

@pytest.mark.cuda
def test_nvjpeg_decode_is_close_to_libjpeg(koniq_root):
    from torchvision.io import ImageReadMode, decode_jpeg

    m = load_koniq(koniq_root).head(8)
    datas = [torch.frombuffer(bytearray((m.root / p).read_bytes()), dtype=torch.uint8) for p in m.path]
    gpu = decode_jpeg(datas, mode=ImageReadMode.RGB, device="cuda")
    for d, g in zip(datas, gpu):
        c = decode_jpeg(d, mode=ImageReadMode.RGB)
        assert g.shape == c.shape and g.is_cuda
        diff = (g.cpu().int() - c.int()).abs().float()
        assert diff.mean() < 1.0  # IDCT/upsampling implementations differ slightly


@pytest.mark.cuda
@pytest.mark.parametrize("precision,bar", [("fp32", 0.999), ("bf16", 0.99)])
def test_gpu_pipeline_matches_cpu_reference(koniq_root, precision, bar, tmp_path):
    m = load_koniq(koniq_root).head(16)
    ref = EmbedConfig(encoder=EncoderConfig(model="ViT-B-32", pretrained="none"), device="cpu", batch_size=16,
                      workers=0, sync=False, pipeline="pil")
    gpu = EmbedConfig(encoder=EncoderConfig(model="ViT-B-32", pretrained="none", precision=precision),
                      device="cuda", batch_size=8, sync=False, pipeline="tensor")
    embed(m, ref, tmp_path / "ref.h5", progress=False)
    s = embed(m, gpu, tmp_path / "gpu.h5", progress=False)
    assert s.routes == {"nvjpeg": 16}
    cos = _cos(cache.load(tmp_path / "ref.h5").features, cache.load(tmp_path / "gpu.h5").features)
    assert cos.min() >= bar, cos.min()
