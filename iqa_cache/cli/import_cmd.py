"""`iqa import`: a cache from features made elsewhere (bring your own
embeddings); the work is in :mod:`iqa_cache.cache.importer`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from iqa_cache.schema import FeatureDtype
from iqa_cache.settings import ImportConfig

from .app import app
from .common import (
    Command,
    LabelCol,
    LabelRange,
    OutOfRange,
    OutOfRangeOpt,
    SplitCol,
    SplitSeed,
    echo_out,
    handle_errors,
    parse_range,
    sigterm_interrupts,
)


@app.command("import", cls=Command)
@handle_errors
def import_command(
    features: Annotated[Path, typer.Option(help="Feature matrix, one row per item: .npy, .npz, .h5/.hdf5 or "
                                                ".parquet.")],
    labels: Annotated[Path, typer.Option(help="CSV with an id, a label and optionally a split per item.")],
    out: Annotated[Path, typer.Option(help="The cache file to write (.h5).")],
    id_col: Annotated[Optional[str], typer.Option(help="CSV column with the ids [default: id, image_id, image, "
                                                       "...].")] = None,
    label_col: LabelCol = None,
    split_col: SplitCol = None,
    features_key: Annotated[Optional[str], typer.Option(help="Array (.npz/.h5) or column (.parquet) holding the "
                                                             "features [default: features, embeddings, ... or "
                                                             "the only 2-D array].")] = None,
    ids_key: Annotated[Optional[str], typer.Option(help="Array or column holding the ids [default: ids, id, "
                                                        "image_id, ...; none: feature row i is CSV row i].")] = None,
    label_range: LabelRange = None,
    out_of_range: OutOfRangeOpt = OutOfRange("error"),
    split_seed: SplitSeed = 0,
    name: Annotated[Optional[str], typer.Option(help="Dataset name recorded [default: the features file's "
                                                     "stem].")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing cache at --out.")] = False,
    dtype: Annotated[FeatureDtype, typer.Option("--dtype", help="How the cache stores the features: float32 or "
                                                                "float16 (half the file).")
                     ] = FeatureDtype(ImportConfig.feature_dtype),
    feature_source: Annotated[Optional[str], typer.Option(
        help="What made the features (e.g. 'ViT-B-32 laion2b 224px'), recorded: `iqa evaluate` scores a run only "
             "on a cache whose declared source and width equal those of its training cache.", metavar="NAME")
                              ] = None,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
) -> None:
    """Write a cache from features made elsewhere, for train-head, ablate and report.

    Rows are matched by id when the features carry ids (.npz/.h5 arrays,
    a .parquet column), else by order. The cache records the file, its
    SHA-256, format and shape; it records no encoder, so `iqa predict`
    cannot score new inputs with runs trained on it.
    """
    from iqa_cache.cache.importer import import_features

    cfg = ImportConfig(features=features, labels=labels, out=out, features_key=features_key, ids_key=ids_key,
                       id_col=id_col, label_col=label_col, split_col=split_col,
                       label_range=parse_range(label_range), out_of_range=out_of_range.value,
                       split_seed=split_seed, name=name, overwrite=overwrite, feature_dtype=dtype.value,
                       feature_source=feature_source)
    with sigterm_interrupts():
        s = import_features(cfg, progress=progress)
    c = s.split_counts
    echo_out(f"{s.path}: {s.n_items} items × {s.feature_dim} features from {s.format} (matched {s.id_matching}); "
             f"train/val/test {c['train']}/{c['val']}/{c['test']}")
    echo_out(f"{s.path}: {s.label_note}")
