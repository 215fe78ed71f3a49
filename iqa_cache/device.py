"""Which device a command runs on: a string (``"cpu"``, ``"cuda"``,
``"cuda:1"``), resolved from the user's choice once, where the work starts.
torch is imported only when a device is resolved."""
from __future__ import annotations

from enum import Enum

from .errors import ConfigError


class Device(str, Enum):
    """The ``--device`` choices; ``cuda:N`` is accepted by :func:`resolve_device` too."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when a GPU is present, else 'cpu'; anything else is
    checked and returned."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is available here (torch {torch.__version__}); "
                          "use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"--device '{device}' is not one of auto, cpu, cuda")
    return device
