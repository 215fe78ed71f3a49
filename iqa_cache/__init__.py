"""iqa-cache: frozen OpenCLIP embeddings cached in HDF5, and imbalance-aware
(LDS / FDS) regression heads trained on them in seconds.

The library is importable without the CLI.  Its modules sit in wings, one
per job: ``sources`` (datasets), ``cache`` (the HDF5 cache, ``iqa import``),
``embed`` (stage one), ``train`` (stage two), ``report``; the modules every
wing uses (errors, schema, binning, seeds, device, settings, metrics) and the
end-to-end ``demo`` and ``predict`` sit at the top (docs/development.md)::

    from iqa_cache import cache
    from iqa_cache.train import fit, imbalance
    w = imbalance.lds_weights(labels, bin_size=1, lo=0, hi=100, reweight="sqrt_inv",
                              kernel="gaussian", ks=5, sigma=2)

``iqa_cache.__version__`` is the version in ``pyproject.toml``, the one place
it is written: the installed distribution's (``importlib.metadata``), or, in a
source checkout that is not installed, read from the ``pyproject.toml`` beside
the package.  It is looked up on first use, so importing the package costs
nothing for it.
"""
from __future__ import annotations

DISTRIBUTION = "iqa-cache"
UNKNOWN_VERSION = "0+unknown"  # neither installed nor in a source checkout


def _version_of_checkout() -> str | None:
    """``[project] version`` of the ``pyproject.toml`` above this package,
    when it is this project's."""
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomli, a dependency there
        import tomli as tomllib
    try:
        project = tomllib.loads(text).get("project", {})
    except tomllib.TOMLDecodeError:
        return None
    return project.get("version") if project.get("name") == DISTRIBUTION else None


def _find_version() -> str:
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return _version_of_checkout() or UNKNOWN_VERSION


def __getattr__(name: str) -> str:
    if name == "__version__":
        version = _find_version()
        globals()["__version__"] = version  # looked up once
        return version
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
