"""Evaluation metrics on (label, prediction) pairs."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .binning import bin_index, parse_decimal, snap

DEFAULT_EDGES = (0.0, 20.0, 40.0, 60.0, 80.0, 100.0)


def mae(labels, preds) -> float:
    labels, preds = np.asarray(labels, dtype=np.float64), np.asarray(preds, dtype=np.float64)
    return float(np.mean(np.abs(labels - preds))) if len(labels) else float("nan")


def _fmt(x: float) -> str:
    return f"{x:g}"


def bin_names(edges: Sequence[float]) -> list[str]:
    """'[0,20)', ..., '[80,100]': half-open bins, the last one closed."""
    e = list(edges)
    names = [f"[{_fmt(a)},{_fmt(b)})" for a, b in zip(e[:-2], e[1:-1])]
    names.append(f"[{_fmt(e[-2])},{_fmt(e[-1])}]")
    return names


def bin_of(labels, edges: Sequence[float]) -> np.ndarray:
    """Index of each label's bin under ``edges`` (-1 outside [e0, e_last]),
    by the label's decimal value (:func:`iqa_cache.binning.bin_index`)."""
    return bin_index(np.asarray(labels, dtype=np.float64), edges)


def per_bin_mae(labels, preds, edges: Sequence[float] = DEFAULT_EDGES) -> dict[str, tuple[float, int]]:
    """{bin name: (MAE, count)} for each bin, then 'All'.  Empty bins give
    NaN with count 0."""
    labels, preds = np.asarray(labels, dtype=np.float64), np.asarray(preds, dtype=np.float64)
    idx = bin_of(labels, edges)
    out: dict[str, tuple[float, int]] = {}
    err = np.abs(labels - preds)
    for i, name in enumerate(bin_names(edges)):
        m = idx == i
        out[name] = (float(err[m].mean()) if m.any() else float("nan"), int(m.sum()))
    out["All"] = (float(err.mean()) if len(err) else float("nan"), int(len(err)))
    return out


def parse_edges(text: str) -> list[float]:
    """'0,20,40,60,80,100' → increasing floats; ValueError naming the problem."""
    e = []
    for x in (x for x in text.split(",") if x.strip() != ""):
        try:
            e.append(parse_decimal(x))
        except ValueError as err:
            raise ValueError(f"--bins '{text}': '{x.strip()}' {err}; give finite, increasing edges separated "
                             "by commas") from None
    if len(e) < 2:
        raise ValueError(f"--bins '{text}' needs at least two edges")
    if any(b <= a for a, b in zip(e, e[1:])):
        raise ValueError(f"--bins '{text}' must be strictly increasing")
    return e


def default_edges(label_range: tuple[float, float]) -> list[float]:
    """0,20,...,100 for 0-100 labels; five equal bins over other ranges."""
    lo, hi = label_range
    return list(np.linspace(lo, hi, 6))


# ------------------------------------------------------------ error summaries

def _pair(labels, preds) -> tuple[np.ndarray, np.ndarray]:
    labels, preds = np.asarray(labels, dtype=np.float64), np.asarray(preds, dtype=np.float64)
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and predictions {preds.shape} differ in shape")
    return labels, preds


def mse(labels, preds) -> float | None:
    """Mean squared error; None for no images."""
    labels, preds = _pair(labels, preds)
    return float(np.mean((labels - preds) ** 2)) if len(labels) else None


def rmse(labels, preds) -> float | None:
    m = mse(labels, preds)
    return None if m is None else math.sqrt(m)


def gmean_abs_error(labels, preds) -> float | None:
    """Geometric mean of the absolute errors (the G-Mean of Yang et al.,
    DIR, ICML 2021, which applies ``scipy.stats.gmean`` to the L1 errors).
    As there, one exact-zero error makes it 0.  None for no images."""
    labels, preds = _pair(labels, preds)
    if not len(labels):
        return None
    err = np.abs(labels - preds)
    if (err == 0).any():
        return 0.0
    return float(np.exp(np.mean(np.log(err))))


def error_summary(labels, preds) -> dict[str, float | int | None]:
    """{'mae', 'mse', 'gmean', 'n'}; None for the errors of an empty set."""
    labels, preds = _pair(labels, preds)
    n = len(labels)
    return {"mae": float(np.mean(np.abs(labels - preds))) if n else None, "mse": mse(labels, preds),
            "gmean": gmean_abs_error(labels, preds), "n": int(n)}


# ------------------------------------------------------ many / medium / few

SHOTS = ("many", "medium", "few")


def shot_of_bins(train_counts, many: int = 100, few: int = 20) -> np.ndarray:
    """Shot class of each label bin from its number of training images, as
    DIR: 'many' if count > ``many``, 'few' if count < ``few``, else
    'medium'."""
    if few > many:
        raise ValueError(f"few-shot threshold {few} is above the many-shot threshold {many}")
    c = np.asarray(train_counts)
    return np.where(c > many, "many", np.where(c < few, "few", "medium")).astype(object)


def shot_metrics(train_labels, labels, preds, bins, many: int = 100, few: int = 20) -> dict[str, dict]:
    """MAE, MSE and G-Mean of the test images in the many-, medium- and
    few-shot regions, and of all of them.  A test image's shot is set by how
    many *training* labels fall into its bin under ``bins`` (an
    :class:`~iqa_cache.train.imbalance.Bins`, the run's LDS bins; labels outside
    its range count in the end bins, as for LDS).  An empty region gives
    None for its errors and n 0, never NaN."""
    labels, preds = _pair(labels, preds)
    shot_bin = shot_of_bins(bins.counts(np.asarray(train_labels, dtype=np.float64)), many, few)
    shot = shot_bin[bins.index(labels)] if len(labels) else np.array([], dtype=object)
    out = {s: error_summary(labels[shot == s], preds[shot == s]) for s in SHOTS}
    out["all"] = error_summary(labels, preds)
    out["bins"] = {s: int((shot_bin == s).sum()) for s in SHOTS}
    return out


# -------------------------------------------------------- label-value groups

def parse_groups(text: str) -> list[tuple[float, ...]]:
    """'3;4;3,4' → [(3,), (4,), (3, 4)]: groups separated by ';', the label
    values of a group by ','.  ValueError naming the problem."""
    groups = []
    for part in text.split(";"):
        if not part.strip():
            raise ValueError(f"--groups '{text}' has an empty group (groups are separated by ';')")
        try:
            vals = tuple(parse_decimal(v, finite=False) for v in part.split(","))
        except ValueError:
            raise ValueError(f"--groups '{text}': '{part.strip()}' is not a comma-separated list of label "
                             "values") from None
        if any(not math.isfinite(v) for v in vals):
            raise ValueError(f"--groups '{text}': label values must be finite numbers")
        if len(set(vals)) != len(vals):
            raise ValueError(f"--groups '{text}': '{part.strip()}' repeats a value")
        groups.append(vals)
    return groups


def group_name(values: Sequence[float]) -> str:
    """(3,) → '3'; (3, 4) → '3&4' (the paper's Table 2 columns)."""
    return "&".join(_fmt(v) for v in values)


def value_mask(labels, values: Sequence[float]) -> np.ndarray:
    """Labels that *match* any of ``values``: a label matches value v when
    v - 0.5 <= label < v + 0.5, i.e. it rounds half up to v.  Discrete labels
    match exactly their own value; averaged ones (a MOS of 3.4) match the
    nearest whole value, with ties (3.5) going up.  Labels are compared by
    their decimal value (:func:`iqa_cache.binning.snap`)."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    m = np.zeros(labels.shape, dtype=bool)
    for v in values:
        x = snap(labels, (v - 0.5, v + 0.5))
        m |= (x >= v - 0.5) & (x < v + 0.5)
    return m


def group_mae(labels, preds, groups: Sequence[Sequence[float]]) -> dict[str, tuple[float | None, int]]:
    """{group name: (MAE, count)} for each group of label values, then
    'All' (the paper's Table 2 form).  An empty group gives (None, 0)."""
    labels, preds = _pair(labels, preds)
    err = np.abs(labels - preds)
    out: dict[str, tuple[float | None, int]] = {}
    for g in groups:
        m = value_mask(labels, g)
        out[group_name(g)] = (float(err[m].mean()) if m.any() else None, int(m.sum()))
    out["All"] = (float(err.mean()) if len(err) else None, int(len(err)))
    return out


def discrete_values(labels, max_values: int = 12) -> list[float] | None:
    """The distinct label values when labels are whole numbers with at most
    ``max_values`` of them (a discrete scale such as 0-4), else None."""
    labels = np.asarray(labels, dtype=np.float64)
    labels = labels[np.isfinite(labels)]
    if not len(labels) or not np.all(labels == np.round(labels)):
        return None
    vals = np.unique(labels)
    return [float(v) for v in vals] if len(vals) <= max_values else None


# ---------------------------------------------------------- IQA correlations

def logistic4(x, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The 4-parameter logistic of VQEG (2000) that maps objective scores
    onto the subjective scale before PLCC: (b1 - b2) / (1 + exp(-(x - b3) /
    |b4|)) + b2."""
    z = -(np.asarray(x, dtype=np.float64) - b3) / max(abs(b4), 1e-12)
    return (b1 - b2) / (1.0 + np.exp(np.clip(z, -700, 700))) + b2


def _logistic_grid_start(xs: np.ndarray, ys: np.ndarray) -> list[float]:
    """Initial values for the 4-parameter fit: over a grid of centres (b3,
    quantiles of the predictions) and scales (b4, 0.05 to 100 prediction
    std), b1 and b2 enter linearly and are solved for by least squares; the
    grid point with the smallest residual wins."""
    centres = np.quantile(xs, np.linspace(0.02, 0.98, 17))
    yc = ys - ys.mean()
    best, best_r2 = [float(ys.max()), float(ys.min()), 0.0, 1.0], -1.0
    for w in np.logspace(np.log10(0.05), 2, 20):
        sig = 1.0 / (1.0 + np.exp(np.clip(-(xs[None, :] - centres[:, None]) / w, -700, 700)))  # (17, n)
        sc = sig - sig.mean(axis=1, keepdims=True)
        var = (sc * sc).sum(axis=1)
        cov = sc @ yc
        r2 = np.where(var > 0, cov * cov / np.where(var > 0, var, 1.0), -1.0) / max(float(yc @ yc), 1e-300)
        i = int(np.argmax(r2))
        if r2[i] > best_r2:
            slope = cov[i] / var[i]
            b2 = float(ys.mean() - slope * sig[i].mean())
            best, best_r2 = [b2 + float(slope), b2, float(centres[i]), float(w)], float(r2[i])
    return best


def fit_logistic4(preds, labels) -> tuple[np.ndarray | None, str]:
    """Least-squares fit of :func:`logistic4` from predictions to labels.

    Both are standardised first (well conditioned whatever the label scale).
    Initial values come from a grid over the centre and scale with b1, b2
    solved for exactly (:func:`_logistic_grid_start`); scipy's bounded
    least-squares (``scipy.optimize.least_squares``, trf: what ``curve_fit``
    runs for a bounded problem, used directly because ``curve_fit`` throws
    away the improved parameters when it stops at its evaluation limit) then
    polishes them for at most 300 evaluations, kept if they lower the
    residual.  The bounds matter: when predictions and labels are nearly
    linear the unbounded optimum lies at infinity (an ever wider, taller
    logistic); at the bound the curve is linear over the data to within
    1e-4, so the fitted PLCC tends to the raw PLCC.

    Returns (parameters in the original units, note) where the note is ''
    or says that the optimiser failed and the best grid fit is used; or
    (None, why) when there is no fit (constant predictions, under 5 images,
    a degenerate curve)."""
    from scipy.optimize import least_squares

    labels, preds = _pair(labels, preds)
    if len(preds) < 5:
        return None, f"{len(preds)} images are too few for a 4-parameter fit"
    sd = float(np.std(preds))
    if not sd > 0:
        return None, "the predictions are constant"
    mx, my, sy = float(preds.mean()), float(labels.mean()), float(np.std(labels)) or 1.0
    xs, ys = (preds - mx) / sd, (labels - my) / sy
    lo, hi = np.array([-1e4, -1e4, -50.0, 1e-3]), np.array([1e4, 1e4, 50.0, 100.0])
    p0 = np.clip(_logistic_grid_start(xs, ys), lo, hi)

    def sse(p) -> float:
        v = float(np.sum((logistic4(xs, *p) - ys) ** 2))
        return v if math.isfinite(v) else math.inf

    best, note = p0, ""
    try:
        with np.errstate(all="ignore"):
            res = least_squares(lambda b: logistic4(xs, *b) - ys, p0, bounds=(lo, hi), method="trf", max_nfev=300)
        if sse(res.x) <= sse(p0):
            best = res.x
    except (RuntimeError, ValueError, np.linalg.LinAlgError) as e:  # keep the grid's fit, which is a fit too
        note = f"the optimiser failed ({str(e).splitlines()[0][:100]}); the best grid fit is used"
    if not math.isfinite(sse(best)):
        return None, "no finite fit"
    b1, b2, b3, b4 = best
    params = np.array([b1 * sy + my, b2 * sy + my, b3 * sd + mx, abs(b4) * sd])
    fitted = logistic4(preds, *params)
    if not (np.all(np.isfinite(params)) and np.all(np.isfinite(fitted))) or not np.std(fitted) > 0:
        return None, "the fitted curve is degenerate (non-finite or flat)"
    return params, note


def _corr(fn, a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or not np.std(a) > 0 or not np.std(b) > 0:
        return None
    r = float(fn(a, b)[0])
    return r if math.isfinite(r) else None


def iqa_metrics(labels, preds) -> dict[str, float | int | str | None]:
    """SRCC (Spearman), KRCC (Kendall tau-b), PLCC (Pearson, raw), PLCC
    after the 4-parameter logistic fit, and RMSE of the raw predictions.
    A correlation that is undefined (fewer than 2 images, constant
    predictions or labels) is None, and so is the fitted PLCC when there is
    no fit: 'fit_error' then says why.  'fit_note' says when the optimiser
    failed and the fitted PLCC comes from the best grid fit."""
    from scipy import stats

    labels, preds = _pair(labels, preds)
    out: dict[str, float | int | str | None] = {
        "srcc": _corr(stats.spearmanr, preds, labels), "krcc": _corr(stats.kendalltau, preds, labels),
        "plcc": _corr(stats.pearsonr, preds, labels), "plcc_logistic": None, "rmse": rmse(labels, preds),
        "n": int(len(labels)), "fit_error": "", "fit_note": ""}
    if out["plcc"] is None:
        out["fit_error"] = "PLCC is undefined (constant predictions or labels, or under 2 images)"
        return out
    params, why = fit_logistic4(preds, labels)
    if params is None:
        out["fit_error"] = why
    else:
        out["fit_note"] = why
        out["plcc_logistic"] = _corr(stats.pearsonr, logistic4(preds, *params), labels)
    return out


# ------------------------------------------------------- paired bootstrap

@dataclass(frozen=True)
class BootstrapDiff:
    """One difference in MAE (A - B) with its percentile interval.  For an
    empty set of images everything but ``name`` and ``n`` is None."""

    name: str
    n: int
    estimate: float | None
    low: float | None
    high: float | None

    @property
    def contains_zero(self) -> bool | None:
        return None if self.low is None else bool(self.low <= 0.0 <= self.high)


def paired_bootstrap(err_a, err_b, strata: dict[str, np.ndarray] | None = None, *, n_boot: int = 2000,
                     seed: int = 0, confidence: float = 0.95, max_elements: int = 4_000_000
                     ) -> list[BootstrapDiff]:
    """Paired bootstrap of the difference in MAE between A and B.

    ``err_a`` (S_a × n) and ``err_b`` (S_b × n) are absolute errors of A's
    and B's runs (one row per seed) on the *same* n test images, in the same
    order.  Each of ``n_boot`` replicates resamples the images with
    replacement (the same images for A and B: paired), and, where a side has
    several seeds, its seeds with replacement (independently for A and B);
    the statistic is mean-over-resampled-seeds MAE of A minus that of B.
    The first result is over all images; then one per stratum of
    ``strata`` (name → image indices, e.g. label bins), resampled within
    the stratum so its size stays fixed.  Percentile intervals; numpy only,
    vectorised over replicates (in chunks of at most ``max_elements``),
    reproducible for a given ``seed``.
    """
    from .errors import ConfigError

    a = np.atleast_2d(np.asarray(err_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(err_b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"paired bootstrap needs the same images for both sides ({a.shape[1]} vs {b.shape[1]})")
    if n_boot < 1:
        raise ConfigError(f"--n-boot must be at least 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence {confidence} must be between 0 and 1")
    n = a.shape[1]
    parts = [("All", np.arange(n))] + [(k, np.asarray(v, dtype=np.int64)) for k, v in (strata or {}).items()]
    rng = np.random.default_rng(seed)
    sa, sb = a.shape[0], b.shape[0]
    stats = [np.empty(n_boot) for _ in parts]
    chunk = max(1, min(n_boot, max_elements // max(1, n)))
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        wa = rng.multinomial(sa, np.full(sa, 1.0 / sa), size=m) / sa if sa > 1 else np.ones((m, 1))
        wb = rng.multinomial(sb, np.full(sb, 1.0 / sb), size=m) / sb if sb > 1 else np.ones((m, 1))
        d = wa @ a - wb @ b  # (m, n): per-image error difference, averaged over resampled seeds
        for (_, idx), out in zip(parts, stats):
            if len(idx) == 0:
                continue
            pick = idx[rng.integers(0, len(idx), size=(m, len(idx)))]
            out[start:start + m] = np.take_along_axis(d, pick, axis=1).mean(axis=1)
    q = 100.0 * (1.0 - confidence) / 2.0
    res = []
    for (name, idx), s in zip(parts, stats):
        if len(idx) == 0:
            res.append(BootstrapDiff(name, 0, None, None, None))
            continue
        est = float(a[:, idx].mean() - b[:, idx].mean())
        lo, hi = np.percentile(s, [q, 100.0 - q])
        res.append(BootstrapDiff(name, int(len(idx)), est, float(lo), float(hi)))
    return res


CORRELATIONS = ("SRCC", "PLCC")
# a difference over fewer test items than this gets no verdict and no bold face (--compare, --versus, the
# demo's closing lines): two or three images decide nothing, whatever their bootstrap interval says
MIN_VERDICT_ITEMS = 10


def _rowwise_corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``x`` with the same row of ``y``
    (NaN where either row is constant)."""
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(axis=1) / den, np.nan)


def correlation(kind: str, labels, preds) -> np.ndarray:
    """SRCC (Spearman: Pearson of the average ranks) or PLCC (Pearson) of
    each row of ``preds`` (… × n) with ``labels`` (the same shape or n)."""
    p = np.atleast_2d(np.asarray(preds, dtype=np.float64))
    lab = np.broadcast_to(np.asarray(labels, dtype=np.float64), p.shape)
    return _rowwise_corr(_ranked(kind, p), _ranked(kind, lab))


def _ranked(kind: str, x: np.ndarray) -> np.ndarray:
    """What ``kind``'s Pearson correlation is taken of: each row's average
    ranks (SRCC) or the values themselves (PLCC)."""
    if kind == "SRCC":
        from scipy.stats import rankdata

        return rankdata(x, axis=1)
    if kind != "PLCC":
        raise ValueError(f"correlation '{kind}' is not one of {', '.join(CORRELATIONS)}")
    return x


def paired_bootstrap_corr(labels, pred_a, pred_b, kind: str, *, n_boot: int = 2000, seed: int = 0,
                          confidence: float = 0.95, max_elements: int = 4_000_000) -> BootstrapDiff:
    """Paired bootstrap of corr(A) − corr(B) (``kind`` SRCC or PLCC) of two
    sets of predictions of the same n images: each replicate resamples the
    images with replacement, the same for A and B.  Percentile interval;
    replicates where a correlation is undefined are left out."""
    lab = np.asarray(labels, dtype=np.float64)
    a, b = np.asarray(pred_a, dtype=np.float64), np.asarray(pred_b, dtype=np.float64)
    n = len(lab)
    name = kind
    est_a, est_b = correlation(kind, lab, a)[0], correlation(kind, lab, b)[0]
    if n < 2 or not (np.isfinite(est_a) and np.isfinite(est_b)):
        return BootstrapDiff(name, n, None, None, None)
    rng = np.random.default_rng(seed)
    stats = []
    chunk = max(1, min(n_boot, max_elements // max(1, n)))
    for start in range(0, n_boot, chunk):
        pick = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        lab_r = _ranked(kind, lab[pick])  # once for both predictions
        stats.append(_rowwise_corr(_ranked(kind, a[pick]), lab_r) - _rowwise_corr(_ranked(kind, b[pick]), lab_r))
    s = np.concatenate(stats)
    s = s[np.isfinite(s)]
    if not len(s):
        return BootstrapDiff(name, n, float(est_a - est_b), None, None)
    q = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(s, [q, 100.0 - q])
    return BootstrapDiff(name, n, float(est_a - est_b), float(lo), float(hi))
