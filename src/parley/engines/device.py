"""Where a neural engine runs and in which number format: ``device`` and ``dtype`` options.

Every neural engine takes ``device = "auto" | "cpu" | "cuda" | "cuda:N"`` and a ``dtype``. The
backends count CUDA devices differently (torch, CTranslate2 and ONNX Runtime each link their
own CUDA), so the caller passes the count its backend sees; this module only decides and
explains:

* ``auto`` is ``cuda:0`` when the backend sees a CUDA device, else ``cpu``.
* ``cuda`` / ``cuda:N`` with no such device is a :class:`~parley.errors.ConfigError` that says
  what the backend sees, never a silent fall-back to the CPU (a GPU deployment that quietly
  runs on the CPU is a latency incident, not a convenience).
* ``dtype = "auto"`` is the backend's fast choice for the device (half precision on CUDA,
  full or int8 on the CPU), chosen by the engine; an explicit dtype the engine cannot run on
  that device is a ConfigError listing what it can.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from parley.errors import ConfigError

__all__ = ["DTYPES", "Placement", "cuda_count_torch", "parse_device", "place"]

DTYPES = ("auto", "float32", "float16", "bfloat16", "int8", "int8_float16", "int8_bfloat16")
"""Every dtype name parley accepts; each engine supports a subset per device."""

_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True, slots=True)
class Placement:
    """A resolved device and dtype."""

    kind: Literal["cpu", "cuda"]
    index: int
    dtype: str

    @property
    def device(self) -> str:
        """``cpu`` or ``cuda:N``, the spelling torch takes."""
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    def __str__(self) -> str:
        return f"{self.device} ({self.dtype})"


def parse_device(spec: str, *, param: str = "device") -> tuple[str, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``; ``"auto"`` -> ``("auto", None)``; else ConfigError."""
    match = _DEVICE.match(spec.strip().lower())
    if match is None or (match.group(1) != "cuda" and match.group(2) is not None):
        raise ConfigError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N", param=param)
    index = match.group(2)
    return match.group(1), None if index is None else int(index)


def place(
    device: str,
    dtype: str,
    *,
    cuda_count: Callable[[], int],
    backend: str,
    dtypes: dict[str, Sequence[str]],
    auto_dtype: dict[str, str],
    param: str = "options",
) -> Placement:
    """Resolve ``device`` and ``dtype`` for an engine.

    ``cuda_count`` returns how many CUDA devices the engine's backend sees (called only when
    the device could be CUDA). ``dtypes`` maps ``"cpu"``/``"cuda"`` to the dtypes the engine
    runs there; ``auto_dtype`` maps them to the engine's choice for ``dtype="auto"``.
    """
    kind, index = parse_device(device, param=f"{param}.device")
    if kind in ("auto", "cuda"):
        count = cuda_count()
        if kind == "auto":
            kind, index = ("cuda", 0) if count > 0 else ("cpu", None)
        elif count == 0:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
            raise ConfigError(
                f"device {device!r} was asked for, but {backend} sees no CUDA device{hint}; "
                f"install {backend} with CUDA support on a machine with an NVIDIA GPU, "
                'or set device = "cpu"',
                param=f"{param}.device",
            )
        elif (index or 0) >= count:
            raise ConfigError(
                f"device {device!r} was asked for, but {backend} sees {count} CUDA "
                f"device{'s' if count != 1 else ''} (cuda:0..cuda:{count - 1})",
                param=f"{param}.device",
            )
    place_kind: Literal["cpu", "cuda"] = "cuda" if kind == "cuda" else "cpu"
    if dtype not in DTYPES:
        raise ConfigError(
            f"dtype {dtype!r} is not one of {', '.join(DTYPES)}", param=f"{param}.dtype"
        )
    resolved = auto_dtype[place_kind] if dtype == "auto" else dtype
    if resolved not in dtypes[place_kind]:
        raise ConfigError(
            f"dtype {dtype!r} is not supported on {place_kind} by {backend}; "
            f"choose one of auto, {', '.join(dtypes[place_kind])}",
            param=f"{param}.dtype",
        )
    return Placement(place_kind, index or 0, resolved)


def cuda_count_torch() -> int:
    """CUDA devices torch sees (0 for a CPU-only build)."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
