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


# ONEDNN_MAX_CPU_ISA values below avx512_core_bf16: oneDNN, which runs torch's
# bfloat16 products on a CPU, then converts bfloat16 in software (slower than float32)
_ONEDNN_BELOW_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def _onednn_cap() -> str:
    import os

    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return "" if cap in ("ALL", "DEFAULT") else cap


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later),
    the units that run bfloat16 matrix products several times faster than
    float32, and oneDNN (torch's bfloat16 products) may use them
    (``ONEDNN_MAX_CPU_ISA`` unset or naming an AMX level)."""
    import torch

    cap = _onednn_cap()
    if cap and "AMX" not in cap:
        return False
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        return bool(probe())
    return _cpuinfo_flag("amx_bf16")


def cpu_has_avx512_bf16() -> bool:
    """Whether this CPU has AVX-512 with the ``avx512_bf16`` dot products
    (Intel Cooper Lake, AMD Zen 4 and later), and torch and oneDNN may use
    them: torch's CPU kernels at the AVX-512 level (not
    ``ATEN_CPU_CAPABILITY=avx2``) and ``ONEDNN_MAX_CPU_ISA`` unset or at
    ``avx512_core_bf16`` or above.  Measured on such a CPU (AMD EPYC, no AMX:
    ``bench/precision_bench.py``): bf16 training steps 1.6-1.9x faster than
    float32 with these kernels, 7-14x slower with AVX2 kernels only."""
    import torch

    if _onednn_cap() in _ONEDNN_BELOW_BF16:
        return False
    if not str(torch.backends.cpu.get_cpu_capability()).upper().startswith("AVX512"):
        return False
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None:
        return bool(probe())
    return _cpuinfo_flag("avx512_bf16")


def _cpuinfo_flag(flag: str) -> bool:
    """An older torch without the probes: the kernel's flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


def auto_precision(device: str) -> tuple[str, str]:
    """``--precision auto`` on the resolved ``device``: the precision and
    why, in words (for the log)."""
    import torch

    if str(device).startswith("cuda"):
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"the GPU of {device} runs bfloat16"
        return "fp32", f"the GPU of {device} has no bfloat16"
    if cpu_has_amx():
        return "bf16", "this CPU has AMX"
    if cpu_has_avx512_bf16():
        return "bf16", "this CPU has AVX-512 bfloat16"
    return "fp32", ("no AMX or AVX-512 bfloat16 that torch may use on this CPU (ATEN_CPU_CAPABILITY, "
                    "ONEDNN_MAX_CPU_ISA); bfloat16 would be converted in software, slower than float32")


def resolve_precision(precision: str, device: str) -> str:
    """Stage two's ``--precision`` on the resolved ``device``: 'auto' →
    'bf16' on a CUDA GPU that supports it or a CPU with AMX
    (:func:`cpu_has_amx`) or AVX-512 bfloat16 (:func:`cpu_has_avx512_bf16`),
    else 'fp32'; fp32, bf16 and fp16 as given (bf16 on a GPU without it is
    refused)."""
    import torch

    is_cuda = str(device).startswith("cuda")
    if precision == "auto":
        return auto_precision(device)[0]
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"--precision '{precision}' is not one of fp32, bf16, fp16, auto")
    if precision == "bf16" and is_cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ConfigError(f"--precision bf16: the GPU of {device} has no bfloat16 support; use fp16, fp32 or auto")
    return precision


def set_threads(threads: int | None) -> None:
    """Let torch's CPU work use at most ``threads`` threads (``--threads``:
    a shared machine); None leaves torch's default (one per core)."""
    if threads is None:
        return
    if isinstance(threads, bool) or int(threads) != threads or threads < 1:
        raise ConfigError(f"--threads must be a whole number of at least 1, got {threads!r}")
    import torch

    torch.set_num_threads(int(threads))
