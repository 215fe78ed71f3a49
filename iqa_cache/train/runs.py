"""Run directories: what ``train-head`` writes and ``report`` reads.

A run directory holds ``config.json`` (everything needed to rebuild the head
and to know which cache it was trained on), ``head.pt`` (a plain state dict,
loadable with ``torch.load(weights_only=True)``), ``predictions.csv``
(``image_id,split,label,pred`` for every cached image), ``metrics.json`` and
``history.csv``, plus the marker ``.iqa-run`` (a small JSON: tool, kind
``run``, version, status ``partial``/``complete``, pid and host of the
writer) that says this tool wrote it.  It is written under a temporary name
(``.NAME.partial-PID``, marker ``partial``), completed, then swapped into
place, so a directory with the final name is always complete.

What may be replaced or removed (``--overwrite``, a rerun after a kill) is
decided here, once: only directories this tool wrote (by the marker, or, for
runs of versions before the marker, by the full run layout holding nothing
else), never the current directory, never one holding the cache being
trained on.  Anything else is refused with one line naming what is in the
way.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from ..binning import Bins
from ..errors import ConfigError, RunError, clip
from ..schema import FEATURE_KEYS, FLOAT32_MAX
from .config import HeadConfig, TrainConfig
from .methods import CLOSED_FORM_METHODS

if TYPE_CHECKING:  # torch is imported where heads are saved or loaded: `iqa report` never needs it
    from .fit import TrainResult
    from .head import ResidualMLPHead

log = logging.getLogger(__name__)

RUN_FILES = ("config.json", "head.pt", "predictions.csv", "metrics.json")
MARKER = ".iqa-run"
RUN_LAYOUT = RUN_FILES + ("history.csv", MARKER, MARKER + ".new")  # every file a run directory may hold
TOOL = "iqa-cache"
CACHE_KEYS = FEATURE_KEYS + ("dataset", "dataset_root", "manifest_sha256", "n_images", "n_embedded", "n_failed",
                             "label_name", "label_range", "split_source", "pretrained", "pretrained_file",
                             "content_id", "labels_version",
                             # features imported with `iqa import` (iqa_cache.cache.importer): where they came from
                             "feature_source", "imported_path", "imported_sha256", "imported_format",
                             "imported_features_key", "imported_shape", "labels_csv",
                             "backend", "encoder", "declared_feature_source")


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf → None, tuples → lists, numpy scalars → Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def as_json(obj: Any) -> Any:
    """``obj`` as it reads back from a JSON file (for comparing with one)."""
    return json.loads(json_bytes(obj))


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n").encode("utf-8")


def write_bytes(path: Path, data: bytes) -> None:
    """``data`` into ``path`` as it is (callers write into a temporary
    directory, or use :func:`write_atomic`)."""
    with open(path, "wb") as f:
        f.write(data)


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, json_bytes(obj))


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` at ``path``: written under a temporary sibling name, then
    renamed.  On a write error (a full disk) RunError naming ``path``; the
    old file, if any, is untouched and no half file is left."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        write_bytes(tmp, data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise RunError(f"cannot write {path}: {e.strerror or e}") from None


# ------------------------------------------------------------- ownership

def marker_bytes(kind: str, status: str, **extra: Any) -> bytes:
    """The marker that says this tool wrote a directory (``kind`` run or
    ablation; ``status`` partial or complete)."""
    from .. import __version__  # looked up on first use (importlib.metadata)

    return json_bytes({"tool": TOOL, "kind": kind, "version": __version__, "status": status, "pid": os.getpid(),
                        "host": socket.gethostname(), "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra})


def write_marker(directory: Path, kind: str, status: str, **extra: Any) -> None:
    write_atomic(Path(directory) / MARKER, marker_bytes(kind, status, **extra))


def read_marker(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The marker of a directory this tool wrote, or None (none, unreadable,
    or not this tool's)."""
    try:
        m = json.loads((Path(directory) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(m, dict) or m.get("tool") != TOOL or m.get("kind") not in ("run", "ablation"):
        return None
    return m


def entries(directory: Path) -> list[str]:
    """The names in ``directory``, folders with a trailing ``/``, sorted."""
    return sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in directory.iterdir())


def describe(names: Sequence[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (", …" if len(names) > limit else "")


def _legacy_config(path: Path) -> bool:
    """A config.json as every version of train-head wrote it."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(cfg, dict) and "iqa_cache_version" in cfg and isinstance(cfg.get("train"), dict)


def run_state(path: str | os.PathLike) -> str | None:
    """What a directory is, for deciding whether it may be replaced:
    ``complete`` or ``partial`` (a run directory with this tool's marker,
    finished or not), ``legacy`` (no marker, but a finished run as versions
    before the marker wrote it: config.json, head.pt, predictions.csv,
    metrics.json), or None for anything else, including a run directory that
    also holds files this tool did not write."""
    path = Path(path)
    try:
        if path.is_symlink() or not path.is_dir():
            return None
        names = {p.name for p in path.iterdir()}
    except OSError:
        return None
    if names - set(RUN_LAYOUT):
        return None
    marker = read_marker(path)
    if marker is not None:
        if marker["kind"] != "run":
            return None
        return "complete" if marker.get("status") == "complete" and set(RUN_FILES) <= names else "partial"
    if set(RUN_FILES) <= names and _legacy_config(path / "config.json"):
        return "legacy"
    return None


def foreign(path: Path, allowed: Sequence[str]) -> list[str]:
    """Entries of ``path`` other than ``allowed`` (names, folders with
    ``/``)."""
    return [n for n in entries(path) if n.rstrip("/") not in allowed]


def writer_alive(pid: int, host: str | None = None) -> bool:
    """Whether the process that wrote something may still be writing it
    (another host: cannot tell, so yes)."""
    from ..cache.files import process_alive  # h5py: only where runs are written, never for `iqa report`

    return host not in (None, socket.gethostname()) or process_alive(pid)


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_out_location(out: Path, protect: dict[str, str] | None = None) -> None:
    """Refuse an ``--out`` that is or holds the current directory, holds a
    protected path (the cache being trained on), or lies inside a run
    directory; checked before any work."""
    r = Path(out).resolve()
    cwd = Path.cwd().resolve()
    if _inside(cwd, r):
        what = "the current directory" if cwd == r else f"a folder holding the current directory ({cwd})"
        raise RunError(f"refusing --out {out}: it is {what}; give a folder of its own, e.g. --out runs/NAME")
    for p, label in (protect or {}).items():
        pr = Path(p).resolve()
        if _inside(pr, r):
            raise RunError(f"refusing --out {out}: it holds {label} ({p}); give another folder")
    for anc in r.parents:
        if run_state(anc) is not None:
            raise RunError(f"refusing --out {out}: it is inside the run directory {anc}")


def clean_stale(out: Path) -> None:
    """What an interrupted writer of ``out`` left next to it: its
    ``.NAME.partial-PID`` directory is removed, and ``.NAME.old-PID`` (the
    previous run, moved aside for a swap that was cut short) is put back
    when NAME is missing, else removed.  Only directories this tool wrote
    (marker, or a finished run's layout) whose writer is gone are touched."""
    parent, prefix = out.parent, f".{out.name}."
    if not parent.is_dir():
        return
    for p in sorted(parent.iterdir()):
        if not p.name.startswith(prefix):
            continue
        kind, _, pid = p.name[len(prefix):].rpartition("-")
        if kind not in ("partial", "old") or not pid.isdigit() or p.is_symlink() or not p.is_dir():
            continue
        state, marker = run_state(p), read_marker(p)
        empty = not any(p.iterdir())
        if (state is None and not empty) or writer_alive(int(pid), (marker or {}).get("host")):
            continue
        if kind == "old" and state in ("complete", "legacy") and not os.path.lexists(out):
            os.replace(p, out)
            log.warning("restored %s from %s: replacing it was interrupted", out, p.name)
            continue
        shutil.rmtree(p)
        log.info("removed %s, left by an interrupted run", p)


def prepare_run_target(out: str | os.PathLike, *, overwrite: bool, protect: dict[str, str] | None = None) -> bool:
    """Check that a run may be written at ``out`` (before training, and
    again before writing): RunError naming what is in the way unless ``out``
    is missing, an empty folder, an unfinished run of this tool, or a
    finished one and ``overwrite``.  Leftovers of an interrupted run are
    removed first.  True when something at ``out`` will be replaced."""
    out = Path(out)
    check_out_location(out, protect)
    clean_stale(out)
    if not os.path.lexists(out):
        return False
    if out.is_symlink():
        raise RunError(f"refusing to replace {out}: it is a symbolic link; give the run directory itself or "
                       "another --out")
    if not out.is_dir():
        raise RunError(f"refusing to replace {out}: it is a file, not a run directory")
    names = entries(out)
    if not names:
        return True
    state = run_state(out)
    if state is None:
        marker = read_marker(out)
        if marker is not None and marker["kind"] == "ablation":
            raise RunError(f"refusing to replace {out}: it is an ablation folder written by iqa, not one run; give "
                           "another --out")
        ours = marker is not None or set(RUN_FILES) <= {n.rstrip("/") for n in names}
        shown = foreign(out, RUN_LAYOUT) if ours else names
        raise RunError(f"refusing to replace {out}: it is not a run written by iqa (holds {describe(shown)})")
    if state == "partial":
        return True
    if not overwrite:
        raise RunError(f"run directory {out} already exists; pass --overwrite to replace it, or another --out")
    return True


def _swap(tmp: Path, out: Path) -> None:
    """Put the complete ``tmp`` at ``out``; the old ``out`` is removed only
    after that."""
    if not os.path.lexists(out):
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def output_lock(out: str | os.PathLike, command: str, what: str):
    """The writer lock of the output folder ``out`` (``.NAME.lock`` beside
    it): a second writer is refused in one line naming ``command`` and the
    pid holding it."""
    from ..cache.files import WriterLock  # h5py: not for `iqa report`, which only reads runs

    out = Path(out)
    return WriterLock(out, command, lock_path=out.with_name(f".{out.name}.lock"), what=what)


def write_run(out: str | os.PathLike, result: "TrainResult", cache_attrs: dict[str, Any], cache_path: str | os.PathLike,
              *, overwrite: bool = False, extra: dict[str, Any] | None = None, command: str = "iqa train-head"
              ) -> Path:
    """Write ``result`` as a run directory at ``out``: complete, then
    swapped into place, under ``out``'s writer lock (what is at ``out`` is
    checked once the lock is held).  On a write error (a full disk) RunError
    naming the file; ``out`` is left as it was."""
    with output_lock(out, command, "run directory"):
        return _write_run(Path(out), result, cache_attrs, cache_path, overwrite=overwrite, extra=extra)


def _write_run(out: Path, result: "TrainResult", cache_attrs: dict[str, Any], cache_path: str | os.PathLike,
               *, overwrite: bool, extra: dict[str, Any] | None) -> Path:
    from .. import __version__

    prepare_run_target(out, overwrite=overwrite, protect={str(cache_path): "the cache being trained on"})
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    config = {
        "iqa_cache_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "train": result.config.to_dict(),
        "bins": {"lo": result.bins.lo, "hi": result.bins.hi, "size": result.bins.size, "n": result.bins.n},
        "cache": {"path": str(Path(cache_path).resolve()), **{k: cache_attrs.get(k) for k in CACHE_KEYS}},
        "device": result.device,
        "seconds": result.seconds,
        **(extra or {}),
    }
    import torch

    head = io.BytesIO()
    torch.save(result.head.state_dict(), head)
    files = {
        "config.json": json_bytes(config),
        "head.pt": head.getvalue(),
        "predictions.csv": result.predictions.to_csv(index=False, float_format="%.6f").encode("utf-8"),
        "history.csv": pd.DataFrame(result.history).to_csv(index=False, float_format="%.6g").encode("utf-8"),
        "metrics.json": json_bytes(result.metrics),
    }
    name = MARKER
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        write_bytes(tmp / MARKER, marker_bytes("run", "partial"))
        for name, data in files.items():
            write_bytes(tmp / name, data)
        name = MARKER
        write_bytes(tmp / f"{MARKER}.new", marker_bytes("run", "complete"))
        os.replace(tmp / f"{MARKER}.new", tmp / MARKER)
        name = ""
        _swap(tmp, out)
    except OSError as e:
        where = out / name if name else out
        raise RunError(f"cannot write {where}: {e.strerror or e}; {out} was left as it was") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class Run:
    path: Path
    name: str
    config: dict[str, Any]
    predictions: pd.DataFrame
    metrics: dict[str, Any]

    @property
    def cache(self) -> dict[str, Any]:
        return self.config.get("cache", {})

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config["train"])

    @property
    def label_range(self) -> tuple[float, float]:
        lr = self.cache.get("label_range") or [self.config["bins"]["lo"], self.config["bins"]["hi"]]
        return float(lr[0]), float(lr[1])


def is_finished(path: Path) -> bool:
    if not (path.is_dir() and all((path / f).is_file() for f in RUN_FILES)):
        return False
    marker = read_marker(path)
    return marker is None or marker.get("status") == "complete"


def saved_train_config(path: str | os.PathLike) -> TrainConfig:
    """The training configuration a run saved (``RUN/config.json``, or the
    run directory): what ``--config`` starts from.  RunError naming the
    file when it is not a run's config."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"--config {path}: no such file") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise RunError(f"--config {path}: not a readable JSON file ({e})") from None
    train = doc.get("train") if isinstance(doc, dict) else None
    if not isinstance(train, dict):
        raise RunError(f"--config {path}: not a run's config.json (no 'train' section)")
    try:
        return TrainConfig.from_dict(train)
    except (ConfigError, TypeError, ValueError) as e:
        raise RunError(f"--config {path}: {e}") from None


def ablation_runs(path: str | os.PathLike) -> list[Path] | None:
    """The finished run directories of an ablation folder (what ``iqa
    ablate`` writes: its marker of kind ablation, or ``ablation.json``
    beside runs), sorted by name; None when ``path`` is not one."""
    from .config import PLAN_FILE

    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return None
    marker = read_marker(path)
    if not (marker is not None and marker["kind"] == "ablation" or marker is None and (path / PLAN_FILE).is_file()):
        return None
    try:
        children = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    except OSError:
        return None
    return [p for p in children if run_state(p) in ("complete", "legacy")]


def grid_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ablation folder's own summary (``summary.csv``
    or ``ablation.json``), as a shell glob ``runs/grid/*`` passes them."""
    from .config import PLAN_FILE, SUMMARY_FILE

    path = Path(path)
    return path.name in (SUMMARY_FILE, PLAN_FILE) and path.is_file() and ablation_runs(path.parent) is not None


def best_by_validation(paths: Sequence[Path]) -> Path:
    """The run among ``paths`` with the lowest validation MAE (its
    metrics.json), the first one when none says."""
    def val_mae(p: Path) -> float:
        try:
            m = json.loads((p / "metrics.json").read_text(encoding="utf-8"))
            v = m.get("best_val_mae", m["val"]["mae"])
            return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.inf
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return math.inf
    return min(paths, key=val_mae)


def refuse_ablation_folder(path: str | os.PathLike) -> None:
    """RunError naming the run to pass when ``path`` is an ablation folder
    where one run is expected (``predict --run``): cheap, reads no run."""
    inside = ablation_runs(path)
    if inside is not None:
        raise RunError(f"{path} is an ablation folder (iqa ablate) of {len(inside)} finished runs, not a run: "
                       f"pass one of them{', e.g. ' + str(best_by_validation(inside)) if inside else ''}")


def load_run(path: str | os.PathLike) -> Run:
    """Read a finished run directory; RunError naming what is missing."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise RunError(f"{path} is not a run directory")
    missing = [f for f in RUN_FILES if not (path / f).is_file()]
    if missing:
        refuse_ablation_folder(path)
        raise RunError(f"run {path} is not finished (missing {', '.join(missing)})")
    marker = read_marker(path)
    if marker is not None and marker.get("status") != "complete":
        raise RunError(f"run {path} is not finished (its writer was interrupted; {MARKER} says "
                       f"{marker.get('status')!r})")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise RunError(f"run {path}: config.json or metrics.json is not valid JSON ({clip(e)})") from None
    for name, doc in (("config.json", config), ("metrics.json", metrics)):
        if not isinstance(doc, dict):
            raise RunError(f"run {path}: {name} is a JSON {type(doc).__name__}, not an object of settings")
    try:
        preds = pd.read_csv(path / "predictions.csv", dtype={"image_id": str, "split": str},
                            keep_default_na=False, na_values={"label": ["", "nan", "NaN"], "pred": ["", "nan", "NaN"]})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise RunError(f"run {path}: predictions.csv cannot be read ({e})") from None
    need = {"image_id", "split", "label", "pred"}
    if not need <= set(preds.columns):
        raise RunError(f"run {path}: predictions.csv lacks column(s) {', '.join(sorted(need - set(preds.columns)))}")
    for c in ("label", "pred"):
        preds[c] = pd.to_numeric(preds[c], errors="coerce")
    # a head predicts float32 numbers: a larger one (1e308) is damage, read as a prediction that is not finite
    beyond = preds["pred"].abs() > FLOAT32_MAX
    if beyond.any():
        preds.loc[beyond, "pred"] = float("inf")
    ev = config.get("evaluation") if isinstance(config, dict) else None
    name = f"{ev.get('run_name')} on {ev.get('dataset')}" if isinstance(ev, dict) else path.name  # iqa evaluate
    return Run(path=path, name=name, config=config, predictions=preds, metrics=metrics)


def load_head(path: str | os.PathLike, map_location: str = "cpu") -> "ResidualMLPHead":
    """Rebuild a trained head from its run directory (config.json +
    head.pt, loaded with ``weights_only=True``); a ridge run's is a
    :class:`~iqa_cache.train.ridge.LinearHead`."""
    import torch

    from .head import ResidualMLPHead

    run = load_run(path)
    try:  # every setting checked (types, bounds: the head's size) before anything is allocated
        cfg = run.train_config
        b = run.config["bins"]
        bins = Bins(b["lo"], b["hi"], b["size"])
        head_cfg = HeadConfig(**run.config["train"]["head"])
    except (ConfigError, TypeError, ValueError, KeyError, AttributeError) as e:
        what = f"lacks {e}" if isinstance(e, KeyError) else f"holds a bad setting: {str(e).splitlines()[0]}"
        raise RunError(f"run {path}: config.json {clip(what)}") from None
    if cfg.method.name in CLOSED_FORM_METHODS:  # a linear map (iqa_cache.train.ridge)
        from .ridge import LinearHead

        head = LinearHead(cfg.head)
    else:
        head = ResidualMLPHead(head_cfg, cfg.fds, bins.n)
    try:
        state = torch.load(Path(path) / "head.pt", map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors come in many types
        raise RunError(f"run {path}: head.pt cannot be loaded safely ({str(e).splitlines()[0][:200]})") from None
    try:
        head.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:  # shapes or names that config.json does not describe
        raise RunError(f"run {path}: head.pt does not match config.json's head "
                       f"({clip(str(e).splitlines()[-1].strip() if str(e).strip() else type(e).__name__)})") from None
    return head.eval()
