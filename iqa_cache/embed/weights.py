"""Encoder weights as resolved (:class:`Weights`: a tag, a file or none, with
its SHA-256), the checksum itself, and whether the Hugging Face hub can be
reached.  A leaf module that both encoder backends import."""
from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse


@dataclass(frozen=True)
class Weights:
    """Where encoder weights come from, resolved and checksummed."""

    kind: str  # 'tag' | 'file' | 'none'
    value: str  # the tag, the file path, or 'none'
    path: str = ""  # checkpoint file actually loaded
    sha256: str = ""
    hf_hub: str = ""

    @property
    def identity(self) -> str:
        """What makes two weights the same: the checksum, or 'none'."""
        return "none" if self.kind == "none" else f"sha256:{self.sha256}"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
