"""The one rule for seeds given by a user: a whole number from 0 to 2**63 - 1.

torch, numpy and Python's ``random`` all accept that range (torch refuses
seeds of 2**64 and more, numpy refuses negative ones), so a seed that
``--seed``, a grid's ``seed=``, ``--split-seed`` or ``--boot-seed`` accepts
works everywhere and means the same."""
from __future__ import annotations

from .errors import ConfigError

SEED_MAX = 2 ** 63 - 1


def check_seed(seed, option: str = "--seed") -> int:
    """``seed`` as an int; ConfigError naming ``option`` unless it is a
    whole number in [0, SEED_MAX]."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{option} {seed!r} is not a valid seed: use a whole number from 0 to 2**63-1 "
                          f"({SEED_MAX})")
    return int(seed)
