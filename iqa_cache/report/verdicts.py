"""What a ``--versus`` comparison shows, in sentences computed from it: each
difference whose bootstrap interval excludes 0, with its size, interval and
seed agreement, and the rest named as within the noise.  Nothing here is a
fixed claim: the lines follow the numbers of the run they describe (``iqa
demo`` ends with them)."""
from __future__ import annotations

from ..metrics import CORRELATIONS, MIN_VERDICT_ITEMS
from .types import Versus

HEADING = "What this run shows"


def _number(x: float, digits: int) -> str:
    return f"{x:+.{digits}f}".replace("-", "−")


def verdict_lines(v: Versus, *, digits: int = 2) -> list[str]:
    """One line per row and column (label range, shot region, SRCC, PLCC) whose
    difference to the base stands clear of zero (its interval excludes 0),
    largest first within a row (correlations: three decimals at least), then
    one line per row naming the ranges within the noise.  A range of fewer
    than :data:`~iqa_cache.metrics.MIN_VERDICT_ITEMS` test items gets no
    verdict; one without items, or a row whose every cell is within the
    noise, says so."""
    pct = f"{v.confidence:.0%}"
    lines = []
    for name, cells in v.rows:
        clear, noise, few, empty = [], [], [], []
        for col, c in zip(v.columns, cells):
            if c.diff.estimate is None:
                empty.append(col)
            elif c.diff.n < MIN_VERDICT_ITEMS:
                few.append((col, c.diff.n))
            elif c.diff.contains_zero is False:
                clear.append((col, c))
            else:
                noise.append(col)
        for col, c in sorted(clear, key=lambda t: -abs(t[1].diff.estimate)):
            d = c.diff
            corr = col in CORRELATIONS  # higher is better; MAE: lower is better
            metric, k = (col, max(digits, 3)) if corr else ("MAE", digits)
            word = f"{'higher' if d.estimate > 0 else 'lower'} ({'better' if (d.estimate > 0) == corr else 'worse'})"
            lines.append(f"{name} vs {v.base}, {col}: {metric} {word} by {abs(d.estimate):.{k}f} "
                         f"({pct} interval {_number(d.low, k)} to {_number(d.high, k)}; "
                         f"{c.agree}/{c.seeds} seeds agree, {d.n} test items)")
        if noise and not clear:
            lines.append(f"{name} vs {v.base}: within the noise everywhere (every {pct} interval holds 0)")
        elif noise:
            lines.append(f"{name} vs {v.base}: within the noise in {', '.join(noise)}")
        if few:
            lines.append(f"{name} vs {v.base}: too few test items for a verdict in "
                         + ", ".join(f"{col} ({n})" for col, n in few))
        if empty:
            lines.append(f"{name} vs {v.base}: no test items in {', '.join(empty)}")
    return lines


def verdict_text(v: Versus, *, digits: int = 2) -> str:
    """The lines under their heading, as markdown."""
    return "\n".join([f"### {HEADING}", ""] + [f"- {line}" for line in verdict_lines(v, digits=digits)])
