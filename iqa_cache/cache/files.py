"""The cache file on disk: its default name, opening it (with the reason
when it cannot be opened as a cache), syncing, the atomic move into place,
the temporaries a killed writer leaves, the writer's lock and disk-full
errors.  Nothing here reads the schema."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import h5py

from ..errors import CacheError

log = logging.getLogger(__name__)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "x"


def default_cache_path(cache_dir: str | os.PathLike, dataset: str, model: str, pretrained: str,
                       resize_mode: str, *, limit: int | None = None, precision: str = "fp32") -> Path:
    """``cache/<dataset>_<model>_<pretrained>_<resize>[_<precision>][_n<limit>].h5``;
    a checkpoint file is named by its stem."""
    if os.path.isfile(pretrained) or os.sep in pretrained:
        pretrained = Path(pretrained).stem
    if model.endswith(".json"):
        model = Path(model).stem
    parts = [dataset, model, pretrained, resize_mode]
    if precision != "fp32":
        parts.append(precision)
    if limit is not None:
        parts.append(f"n{limit}")
    return Path(cache_dir) / ("_".join(_slug(p) for p in parts) + ".h5")


def _open(path: Path, mode: str = "r") -> h5py.File:
    if not path.exists():
        raise CacheError(f"cache {path} does not exist; make it with `iqa embed --out {path}`")
    try:
        return h5py.File(path, mode)
    except OSError as e:
        msg = str(e)
        if "unable to lock" in msg.lower():
            raise CacheError(f"cache {path} is open for writing in another process (an `iqa embed` still "
                             "running?); wait for it to finish") from None
        if _has_hdf5_signature(path):  # an HDF5 file: a damaged (e.g. truncated) cache of ours
            raise CacheError(f"cache {path} is damaged ({msg.splitlines()[0]}); delete it and run `iqa embed` "
                             "again") from None
        # never advise deleting what may be someone's file: say what it is instead
        raise CacheError(f"{path} is not an HDF5 file, so not a cache made by `iqa embed` ({describe_file(path)}); "
                         "pass the cache file that `iqa embed --out` wrote") from None


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _has_hdf5_signature(path: Path) -> bool:
    """Whether ``path`` starts with the HDF5 signature (where h5py writes it)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def describe_file(path: Path) -> str:
    """A few words on what a file that is not a cache looks like."""
    try:
        if path.is_dir():
            return "it is a folder"
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"it cannot be read: {e.strerror or e}"
    if size == 0:
        return "it is empty (0 bytes)"
    kinds = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"PK\x03\x04": "a ZIP archive",
             b"%PDF": "a PDF document", b"GIF8": "a GIF image", b"BM": "a BMP image"}
    for magic, kind in kinds.items():
        if head.startswith(magic):
            return f"it looks like {kind}, {size:,} bytes"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of what was read
            return f"{size:,} bytes of other data"
    return f"it looks like text, {size:,} bytes"


def _is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e).lower()  # HDF5 reports it in a ValueError or RuntimeError: "..., errno = 28, ..."
    return ("no space left on device" in text or "disk quota exceeded" in text
            or re.search(rf"errno = ({errno.ENOSPC}|{errno.EDQUOT})\b", text) is not None)


def human_bytes(n: float) -> str:
    """1536 → '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


@contextlib.contextmanager
def disk_guard(path: Path, what: str, needed: int | None = None):
    """Turn 'no space left on device' while ``what`` into one CacheError
    naming ``path`` and, when known, the space it needs (``needed`` bytes)."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as e:
        chain, c = [], e  # h5py closing a file after a failed write may raise another error from the first
        while c is not None and len(chain) < 10:
            chain.append(c)
            c = c.__cause__ or c.__context__
        if any(_is_disk_full(c) for c in chain):
            space = "" if needed is None else f" (it needs about {human_bytes(needed)})"
            raise CacheError(f"no space left on the device while {what} {path}{space}; free some space (or write to "
                             "another --out) and run the same command again") from None
        raise


def next_path(path: str | os.PathLike) -> Path:
    """Where a replacement of ``path`` is built (``--overwrite``, rows added
    or removed, an old schema upgraded) until it is complete."""
    path = Path(path)
    return path.with_name(f".{path.name}.next")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` (of this host) still runs; this process's own
    pid counts as gone (what it left under that pid is from an earlier life)."""
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


_STALE = r"(creating|final|importing)-(\d+)(\.windows)?"


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that a writer killed while creating, importing
    or finalising ``path`` left beside it (``.<name>.creating-PID``,
    ``.<name>.importing-PID``, its ``.windows`` folder and the
    ``..<name>.importing-PID.creating-PID`` it was made from), only those of
    processes that no longer run, and say so.  Call only while holding the
    :class:`WriterLock`.  Returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in sorted(path.parent.glob(f".*{glob.escape(path.name)}.*")):
        m = (re.fullmatch(re.escape(f".{path.name}.") + _STALE, p.name)
             or re.fullmatch(re.escape(f"..{path.name}.") + r"importing-\d+\.(creating)-(\d+)()", p.name))
        if m is None or p.is_symlink() or process_alive(int(m.group(2))):
            continue
        try:
            if m.group(3):
                if not p.is_dir():
                    continue
                shutil.rmtree(p)
            elif p.is_file():
                p.unlink()
            else:
                continue
            removed.append(p)
        except FileNotFoundError:
            pass
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted writer that no longer runs: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_with(new: Path, path: Path) -> None:
    """Move the complete cache ``new`` over ``path`` atomically."""
    os.replace(new, path)
    fsync_path(path.parent)


class WriterLock:
    """An exclusive, advisory lock next to what one process at a time may
    write (``<cache>.lock`` beside a cache; ``lock_path`` for others), held
    by that process.  The lock file says who holds it (pid and command), so
    that the one refused can be told; the kernel releases the lock when the
    process dies, however it dies."""

    def __init__(self, path: Path, command: str = "iqa embed", *, lock_path: Path | None = None,
                 what: str = "cache"):
        path = Path(path)
        self.target = path
        self.lock_path = lock_path if lock_path is not None else path.with_name(path.name + ".lock")
        self.command = command
        self.what = what
        self.fd: int | None = None

    def _refuse(self, fd: int) -> CacheError:
        try:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
        except OSError:
            holder = ""
        pid, _, command = holder.partition(" ")
        who = f"`{command}`" if command.startswith("iqa ") else "process"
        pid = pid if pid.isdigit() else "?"
        return CacheError(f"{self.what} {self.target} is being written by another {who} (pid {pid}); wait for it "
                          "to finish, or write to another --out")

    def __enter__(self) -> "WriterLock":
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                err = self._refuse(fd)
                os.close(fd)
                raise err from None
            # the lock file may have been replaced between open and flock
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {self.command}".encode(), 0)
                self.fd = fd
                return self
            os.close(fd)
        raise CacheError(f"could not lock {self.lock_path}")

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            try:
                self.lock_path.unlink()
            except FileNotFoundError:
                pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
