"""The HDF5 embedding cache (being split into modules; see writer.py)."""
from .writer import *  # noqa: F401,F403
from .writer import CacheError, _attr_value, _fsync_path, _py, _read_state, _write_state  # noqa: F401
