"""What the runs' caches and their own checks say about them, as warnings
shown under every table of runs (``iqa report``, ``iqa ablate``'s summary):
features of a random-weight encoder, which encoder made them, runs on
different caches or on different contents of one cache, runs worse than
predicting the mean or unstable after their best epoch
(:mod:`~iqa_cache.train.status`, recorded in metrics.json).  Torch-free."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from .status import UNSTABLE, UNSTABLE_FACTOR, WORSE_THAN_MEAN

if TYPE_CHECKING:
    from .runs import Run


NAMES_SHOWN = 6  # a warning names at most this many runs of a group, then counts the rest


def name_list(names: Sequence[str], limit: int = NAMES_SHOWN, *, quote: bool = True) -> str:
    """``'a', 'b', 'c'`` or, past ``limit`` names, ``'a', 'b', ... and 194 more``:
    a warning about 200 runs stays one readable line."""
    shown = [repr(n) if quote else str(n) for n in names[:limit]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def run_warnings(runs: Sequence[Run]) -> list[str]:
    """Visible warnings: random-weight encoders, which encoder made the
    features when the cache names it (timm backends), runs on different
    caches.  Each names at most :data:`NAMES_SHOWN` runs per group."""
    notes = []
    random = [r.name for r in runs if r.cache.get("pretrained_kind") == "none"]
    if random:
        if len(random) == 1:
            who = f"run '{random[0]}' was"
        elif len(random) == len(runs) and len(runs) > NAMES_SHOWN:
            who = f"all {len(runs)} runs were"
        else:
            who = f"runs {name_list(random)} were"
        notes.append(f"warning: {who} trained on features of a randomly initialised encoder "
                     "(--pretrained none): the numbers say nothing about CLIP")
    described: dict[str, list[str]] = {}
    for r in runs:
        if r.cache.get("pretrained_kind") != "none" and r.cache.get("encoder"):
            described.setdefault(str(r.cache["encoder"]), []).append(r.name)
    for enc, names in described.items():
        who = f"run '{names[0]}'" if len(names) == 1 else f"runs {name_list(names)}"
        notes.append(f"note: {who}: features from {enc}")
    ident = {}
    for r in runs:
        key = tuple(str(r.cache.get(k)) for k in ("manifest_sha256", "model", "pretrained_sha256", "pretrained_kind",
                                                   "resize_mode", "image_size", "precision",
                                                   # imported caches: which feature file, which array in it
                                                   "imported_sha256", "imported_features_key"))
        ident.setdefault(key, []).append(r.name)
    if len(ident) > 1:
        groups = "; ".join(name_list(v, quote=False) for v in ident.values())
        notes.append(f"warning: these runs were trained on different caches (groups: {groups}): "
                     "differences mix the method with the features or the data")
    else:
        contents: dict[str, list[str]] = {}
        for r in runs:
            if r.cache.get("content_id"):  # runs of caches made before content ids cannot be told apart
                contents.setdefault(str(r.cache["content_id"]), []).append(r.name)
        if len(contents) > 1:
            groups = "; ".join(f"{name_list(v)} (content {k})" for k, v in contents.items())
            notes.append(f"warning: these runs were trained on different contents of the same cache (images "
                         f"re-embedded, or labels/splits updated, in between): {groups}")
    notes.extend(status_warnings(runs))
    return notes


_STATUS_WHY = {
    WORSE_THAN_MEAN: "their best validation MAE is not below that of predicting the training mean: their numbers "
                     "say nothing about the method (check the settings in label units against the label range)",
    UNSTABLE: f"their validation MAE rose over {UNSTABLE_FACTOR:g} times the best after the best epoch: the epoch "
              "kept may be a lucky one",
}


def status_warnings(runs: Sequence[Run]) -> list[str]:
    """One warning per status other than ok (metrics.json), naming its runs."""
    notes = []
    for status, why in _STATUS_WHY.items():
        names = [r.name for r in runs if (r.metrics or {}).get("status") == status]
        if names:
            who = f"run '{names[0]}' is" if len(names) == 1 else f"runs {name_list(names)} are"
            notes.append(f"warning: {who} {status}: {why.replace('their', 'its') if len(names) == 1 else why}")
    return notes
