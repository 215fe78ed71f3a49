"""Shared fixtures.  Everything is generated in temporary folders: no
network, no real dataset, no files outside tmp_path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from iqa_cache.sources.synth import SynthSpec, make_dataset

TINY_MODEL = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Path of a tiny OpenCLIP model config (48-d features, 32 px input)."""
    p = tmp_path_factory.mktemp("models") / "iqa-tiny-vit.json"
    p.write_text(json.dumps(TINY_MODEL))
    return str(p)


@pytest.fixture(scope="session")
def koniq_root(tmp_path_factory) -> Path:
    """A 40-image dataset in KonIQ-10k's exact layout (512x384/ and
    koniq10k_distributions_sets.csv)."""
    root = tmp_path_factory.mktemp("koniq")
    make_dataset(root, SynthSpec(n=40, size=(512, 384), seed=3))
    return root


@pytest.fixture()
def koniq_copy(koniq_root, tmp_path) -> Path:
    """A private copy of koniq_root that a test may damage."""
    import shutil

    dst = tmp_path / "koniq"
    shutil.copytree(koniq_root, dst)
    return dst


def koniq_like_labels(n: int = 7058, seed: int = 0) -> np.ndarray:
    from iqa_cache.sources.synth import sample_koniq_like_labels

    return sample_koniq_like_labels(n, np.random.default_rng(seed))


def learnable_problem(n: int = 900, d: int = 24, seed: int = 0):
    """Features whose label is a smooth function of them, KonIQ-like labels,
    and a 70/10/20 split."""
    from iqa_cache.sources.datasets import seeded_split

    rng = np.random.default_rng(seed)
    y = koniq_like_labels(n, seed)
    basis = rng.normal(size=(4, d))
    t = (y - 58.0) / 15.0
    x = np.stack([t, np.sin(2 * t), t ** 2 - 1, np.cos(t)], 1) @ basis + 0.3 * rng.normal(size=(n, d))
    return x.astype(np.float32), y.astype(np.float32), seeded_split(n, seed)


def write_feature_cache(path, x, y, split, *, pretrained_kind: str = "tag", dataset: str = "synthetic",
                        label_range=(0.0, 100.0)) -> Path:
    """A real, complete cache file holding given features (no encoder)."""
    from iqa_cache import cache
    from iqa_cache.sources.datasets import Manifest

    n, d = x.shape
    ids = np.array([f"img{i:05d}.jpg" for i in range(n)], dtype=object)
    m = Manifest(name=dataset, root=Path("/nonexistent"), image_id=ids, path=ids.copy(),
                 label=np.asarray(y, np.float32), split=np.asarray(split, dtype=object), label_range=label_range,
                 label_name="MOS", source="generated", split_source="generated")
    prov = {"model": "ViT-B-32", "model_config_json": "", "pretrained": "laion2b_s34b_b79k" if pretrained_kind == "tag"
            else "none", "pretrained_kind": pretrained_kind,
            "pretrained_sha256": "0" * 64 if pretrained_kind == "tag" else "", "init_seed": -1, "precision": "fp32",
            "feature": "test", "feature_dim": d, "image_size": 224, "resize_mode": "squash",
            "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3, "exif_transpose": True,
            "open_clip_version": "test", "torch_version": "test"}
    cache.create(path, m, prov, batch_size=max(1, n))
    with cache.CacheWriter(path, sync=False) as w:
        w.commit(0, np.asarray(x, np.float32), np.full(n, cache.OK, np.int8), [""] * n)
        w.finalize()
    return Path(path)
