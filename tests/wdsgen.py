"""WebDataset shards (img2dataset's layout) generated from a KonIQ-like
folder, for the tests and the bench."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pandas as pd


def write_shards(koniq_root: Path, out_dir: Path, per_shard: int, *, n: int | None = None,
                 resolution: str = "512x384", extra_members: bool = True) -> tuple[str, Path, Path]:
    """Tar shards of the first ``n`` KonIQ-like images: ``KEY.jpg``,
    ``KEY.json`` ({"mos", "split", "url"}) and ``KEY.txt`` (a caption), keys
    ``SSSSSIIII`` as img2dataset writes them.  Returns (brace pattern, the
    images' folder, a CSV naming the same images with the same labels and
    splits for ``--dataset csv``)."""
    df = pd.read_csv(koniq_root / "koniq10k_distributions_sets.csv", dtype=str, keep_default_na=False)
    if n is not None:
        df = df.head(n)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    n_shards = (len(df) + per_shard - 1) // per_shard
    for s in range(n_shards):
        with tarfile.open(out_dir / f"{s:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
            for i, r in enumerate(df.iloc[s * per_shard:(s + 1) * per_shard].itertuples()):
                key = f"{s:05d}{i:04d}"
                members = {"jpg": (koniq_root / resolution / r.image_name).read_bytes(),
                           "json": json.dumps({"key": key, "mos": float(r.MOS), "split": r.set,
                                               "url": f"http://example.com/{r.image_name}"}).encode()}
                if extra_members:
                    members["txt"] = f"a picture {r.image_name}".encode()
                for ext, data in members.items():
                    ti = tarfile.TarInfo(f"{key}.{ext}")
                    ti.size = len(data)
                    ti.mtime = 0
                    tf.addfile(ti, io.BytesIO(data))
                rows.append({"image": r.image_name, "label": r.MOS, "split": r.set, "key": key})
    csv = out_dir / "same-images.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return str(out_dir / ("{00000..%05d}.tar" % (n_shards - 1))), koniq_root / resolution, csv
