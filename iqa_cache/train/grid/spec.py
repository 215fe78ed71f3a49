"""A grid's keys and values: parsed from the inline form or a TOML file,
each value checked by its key's parser (one table, :data:`PARSERS`)."""
from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ...errors import ConfigError, clip
from ...seeds import SEED_MAX
from ..config import GRID_KEYS, PRECISIONS
from ..kernels import KERNELS, REWEIGHTS, even_kernel_message
from ..methods import METHODS, RANKSIM_ROWS

_ON, _OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")


# ------------------------------------------------------------------- values

def _bad(key: str, raw: Any, allowed: str) -> ConfigError:
    return ConfigError(f"grid {key}={raw!r} is not valid: {allowed}")


def _text(raw: Any) -> str:
    return str(raw).strip() if not isinstance(raw, bool) else ("on" if raw else "off")


def _switch(key: str, raw: Any) -> bool:
    text = _text(raw).lower()
    if text in _ON or text in _OFF:
        return text in _ON
    raise _bad(key, raw, "use on or off")


def _choice(allowed: Sequence[str]) -> Callable[[str, Any], str]:
    def parse(key: str, raw: Any) -> str:
        text = _text(raw)
        if text not in allowed:
            raise _bad(key, raw, f"use one of {', '.join(allowed)}")
        return text
    return parse


def _whole(key: str, raw: Any, what: str = "") -> int:
    text = _text(raw)
    try:
        number = int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else float(text)
    except ValueError:
        number = math.nan
    if isinstance(raw, float) and not raw.is_integer() or not float(number).is_integer():
        raise _bad(key, raw, "use a whole number" + what)
    return int(number)


def _seed(key: str, raw: Any) -> int:
    value = _whole(key, raw)
    if not 0 <= value <= SEED_MAX:
        raise _bad(key, raw, "use a seed from 0 to 2**63-1 (as --seed)")
    return value


def _split(key: str, raw: Any) -> int | None:
    """``official`` (the cache's own split: None) or a split seed."""
    if _text(raw).lower() == "official":
        return None
    try:
        return _seed(key, raw)
    except ConfigError:
        raise _bad(key, raw, "use official or a split seed from 0 to 2**63-1, e.g. split=0..9") from None


def _kernel_size(key: str, raw: Any) -> int:
    value = _whole(key, raw, " (an odd kernel size)")
    if value < 1:
        raise _bad(key, raw, "use a positive odd kernel size")
    if value % 2 == 0:
        raise _bad(key, raw, even_kernel_message(None, value))
    return value


def _count(key: str, raw: Any) -> int:
    value = _whole(key, raw)
    if value < 1:
        raise _bad(key, raw, "use a positive whole number")
    return value


def _number(*, zero: bool) -> Callable[[str, Any], float]:
    def parse(key: str, raw: Any) -> float:
        try:
            value = float(_text(raw))
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value >= 0 if zero else value > 0)):
            raise _bad(key, raw, "use a number of 0 or more" if zero else "use a positive number")
        return value
    return parse


_POSITIVE, _NON_NEGATIVE = _number(zero=False), _number(zero=True)
# Each grid key's parser: a new grid key is a row here and a name in config.GRID_KEYS.
PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "lds": _switch, "fds": _switch, "reweight": _choice(REWEIGHTS), "lds_kernel": _choice(KERNELS),
    "fds_kernel": _choice(KERNELS), "lds_ks": _kernel_size, "fds_ks": _kernel_size, "lds_sigma": _POSITIVE,
    "fds_sigma": _POSITIVE, "bin_size": _POSITIVE, "lr": _POSITIVE, "seed": _seed,
    "method": _choice(METHODS), "bmse_sigma": _POSITIVE, "bmse_fix_sigma": _switch, "gai_components": _count,
    "bni_lds": _switch, "bni_sigma": _POSITIVE, "dist_weight": _NON_NEGATIVE, "dist_bw": _POSITIVE,
    "ranksim_gamma": _NON_NEGATIVE, "ranksim_lambda": _POSITIVE, "ranksim_rows": _choice(RANKSIM_ROWS),
    "dw_alpha": _NON_NEGATIVE, "split": _split, "precision": _choice(PRECISIONS),
}
# Keys whose values may be written as an inclusive range, e.g. seed=0..9.
RANGE_KEYS = ("seed", "gai_components", "split")
# The most configurations one grid may have: counted (the product of its keys' numbers of values) before
# anything is expanded, and refused beyond.
MAX_GRID_CONFIGS = 100_000


def parse_value(key: str, raw: Any) -> Any:
    """One grid value (a string from the inline form, or a TOML value),
    checked; ConfigError naming the key, the value and what is allowed."""
    if key not in GRID_KEYS:
        raise ConfigError(f"grid key '{key}' is not one of {', '.join(GRID_KEYS)}")
    return PARSERS[key](key, raw)


def expand_ranges(key: str, raws: Sequence[Any]) -> list[Any]:
    """``A..B`` (inclusive, whole numbers) as the values A, A+1, ..., B, for
    the keys of :data:`RANGE_KEYS`."""
    out: list[Any] = []
    for raw in raws:
        m = re.fullmatch(r"\s*([0-9]+)\s*\.\.\s*([0-9]+)\s*", raw) if isinstance(raw, str) else None
        if m is None:
            out.append(raw)
            continue
        a, b = int(m.group(1)), int(m.group(2))
        if key not in RANGE_KEYS:
            raise _bad(key, raw, f"a range A..B is for {', '.join(RANGE_KEYS)} only")
        if b < a or b - a >= MAX_GRID_CONFIGS:
            raise _bad(key, raw, f"use a range A..B with A <= B (at most {MAX_GRID_CONFIGS:,} values)")
        if len(out) + b - a + 1 > MAX_GRID_CONFIGS:
            raise ConfigError(f"grid key '{key}' has more than {MAX_GRID_CONFIGS:,} values (the limit of a grid, "
                              "MAX_GRID_CONFIGS); split it into several ablations")
        out.extend(range(a, b + 1))
    return out

def format_value(value: Any) -> str:
    if value is None:  # only split holds None: the cache's own split
        return "official"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


# --------------------------------------------------------------------- spec

@dataclass(frozen=True)
class GridSpec:
    """The keys of a grid and their values, in the order given."""

    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    source: str = "inline"

    def __post_init__(self) -> None:
        if not self.axes:
            raise ConfigError("the grid is empty: give at least one key, e.g. 'lds=on,off'")

    @property
    def size(self) -> int:
        return math.prod(len(v) for _, v in self.axes)

    def points(self) -> Iterator[dict[str, Any]]:
        keys = [k for k, _ in self.axes]
        for combo in itertools.product(*(v for _, v in self.axes)):
            yield dict(zip(keys, combo))

    def to_dict(self) -> dict[str, list[Any]]:
        return {k: list(v) for k, v in self.axes}


def _norm_key(key: str) -> str:
    return key.strip().replace("-", "_")


def _axes(items: Sequence[tuple[str, Sequence[Any]]]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    seen: dict[str, tuple[Any, ...]] = {}
    for key, raws in items:
        key = _norm_key(key)
        if key not in GRID_KEYS:
            raise ConfigError(f"grid key '{key}' is not one of {', '.join(GRID_KEYS)}")
        if key in seen:
            raise ConfigError(f"grid key '{key}' is given twice; list all its values once, e.g. {key}=a,b")
        if len(raws) == 0:
            raise ConfigError(f"grid key '{key}' has no values")
        values = tuple(parse_value(key, r) for r in expand_ranges(key, raws))
        given: set[Any] = set()
        for v in values:  # a set: 100,000 seeds are checked at once, not pairwise
            if v in given:
                raise ConfigError(f"grid {key}: value {clip(format_value(v))} is given twice")
            given.add(v)
        seen[key] = values
    n = math.prod(len(v) for v in seen.values())
    if n > MAX_GRID_CONFIGS:
        sizes = " × ".join(f"{len(v):,} {k}" for k, v in seen.items())
        raise ConfigError(f"the grid has {n:,} configurations ({clip(sizes)}), over the limit of "
                          f"{MAX_GRID_CONFIGS:,} (MAX_GRID_CONFIGS); split it into several ablations")
    return tuple(seen.items())


def parse_grid(text: str) -> GridSpec:
    """The inline form: ``key=v1,v2; key=v; ...`` (``;`` or newlines between
    keys, ``,`` between values)."""
    items = []
    for part in text.replace("\n", ";").split(";"):
        if not part.strip():
            continue
        if "=" not in part:
            raise ConfigError(f"grid part '{part.strip()}' is not key=value[,value...]; keys: {', '.join(GRID_KEYS)}")
        key, _, values = part.partition("=")
        raws = [v.strip() for v in values.split(",")]
        if any(v == "" for v in raws):
            raise ConfigError(f"grid key '{key.strip()}' has an empty value in '{part.strip()}'")
        items.append((key, raws))
    return GridSpec(_axes(items), source="inline")


def load_grid_file(path: str | os.PathLike) -> GridSpec:
    """A TOML file whose top-level keys are grid keys, each a value or a
    list of values (an optional ``[grid]`` table holding them also works)."""
    path = Path(path)
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(f"reading the grid file {path} needs Python 3.11 or the 'tomli' package "
                              "(pip install tomli); or give the grid inline") from None
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"grid file {path} cannot be read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"grid file {path} is not valid TOML ({e})") from None
    if set(doc) == {"grid"} and isinstance(doc["grid"], dict):
        doc = doc["grid"]
    items = []
    for key, value in doc.items():
        if isinstance(value, dict):
            raise ConfigError(f"grid file {path}: '{key}' is a table; give grid keys as values or lists")
        items.append((key, value if isinstance(value, list) else [value]))
    return GridSpec(_axes(items), source=str(path))


def read_grid(arg: str) -> GridSpec:
    """``--grid``: a TOML file when ``arg`` names an existing file or ends in
    .toml, else the inline form."""
    p = Path(arg)
    if arg.strip().lower().endswith(".toml") or ("=" not in arg and p.is_file()):
        if not p.is_file():
            raise ConfigError(f"grid file {p} does not exist")
        return load_grid_file(p)
    return parse_grid(arg)
