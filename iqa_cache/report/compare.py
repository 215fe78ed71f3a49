"""``iqa report --compare``: a paired bootstrap of the MAE difference
between two runs or seed groups, overall and per label range."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import RunError
from ..metrics import bin_names, bin_of, paired_bootstrap
from .loading import range_edges, split_arrays
from .types import Comparison, Entry


def find_entry(entries: list[Entry], path: str) -> Entry:
    """The row (run or seed group) that holds the run directory ``path``."""
    target = Path(path).resolve()
    for e in entries:
        if any(r.path.resolve() == target for r in e.runs):
            return e
    raise RunError(f"--compare {path}: not among the finished runs of this report")


def errors_matrix(entry: Entry, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids sorted, labels, |error| per seed × image) of an entry."""
    ids0, lab0 = None, None
    errs = []
    for r in entry.runs:
        ids, lab, pred = split_arrays(r, split)
        order = np.argsort(ids, kind="stable")
        ids, lab, pred = ids[order], lab[order], pred[order]
        if ids0 is None:
            ids0, lab0 = ids, lab
        elif len(ids) != len(ids0) or not np.array_equal(ids, ids0):
            raise RunError(f"--compare: runs of '{entry.name}' have different {split} images; cannot pair them")
        errs.append(np.abs(lab - pred))
    return ids0, lab0, np.stack(errs)


def compare_entries(entries: list[Entry], paths: tuple[str, str], *, split: str,
                    edges: Sequence[float] | None = None, n_boot: int = 2000, seed: int = 0,
                    confidence: float = 0.95) -> Comparison:
    """The paired bootstrap of MAE(A) − MAE(B), A and B the rows holding
    the two run directories ``paths``: over the images of ``split`` (the
    same for both) and, for seed groups, over their seeds; per label range
    (``edges``, default the tables' ranges) within the range."""
    a, b = find_entry(entries, paths[0]), find_entry(entries, paths[1])
    if a is b:
        raise RunError(f"--compare {paths[0]} {paths[1]}: both are in '{a.name}'; compare two "
                       "different runs or seed groups (or pass --no-group-seeds)")
    ids_a, lab_a, ea = errors_matrix(a, split)
    ids_b, _, eb = errors_matrix(b, split)
    if len(ids_a) != len(ids_b) or not np.array_equal(ids_a, ids_b):
        raise RunError(f"--compare: '{a.name}' and '{b.name}' have different {split} images "
                       f"({len(ids_a)} vs {len(ids_b)}); a paired comparison needs the same images")
    if not len(ids_a):
        raise RunError(f"--compare: no {split} images with labels to compare on")
    edges = range_edges([r for e in (a, b) for r in e.runs], edges)
    idx = bin_of(lab_a, edges)
    strata = {name: np.flatnonzero(idx == i) for i, name in enumerate(bin_names(edges))}
    diffs = paired_bootstrap(ea, eb, strata, n_boot=n_boot, seed=seed, confidence=confidence)
    return Comparison(a=a.name, b=b.name, n_seeds_a=len(a.runs), n_seeds_b=len(b.runs), n_images=len(ids_a),
                      n_boot=n_boot, seed=seed, confidence=confidence, split=split, diffs=diffs)
