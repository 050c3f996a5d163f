"""Where model_build trains: ``--device auto|cpu|cuda``. The bundle is the same either way: the graphs are
exported from CPU float32 weights and checked for parity on CPU ONNX Runtime, as the daemon runs them.

On CUDA the forward and backward passes run under automatic mixed precision (bfloat16 where the GPU has it,
else float16 with a gradient scaler); on CPU everything stays float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> str:
    """ "cpu" or "cuda"; "auto" picks CUDA when a GPU is usable. Asking for CUDA without one is an error."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA GPU is usable here (torch.cuda.is_available() is False)")
    return name


def amp_dtype(device: str) -> torch.dtype | None:
    """The autocast dtype on ``device`` (None: full float32)."""
    if device != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: str) -> Iterator[None]:
    dtype = amp_dtype(device)
    if dtype is None:
        yield
        return
    with torch.autocast("cuda", dtype=dtype):
        yield


def grad_scaler(device: str) -> torch.amp.GradScaler:
    """A scaler that is active only for float16 autocast (bfloat16 and float32 need none)."""
    return torch.amp.GradScaler("cuda", enabled=amp_dtype(device) == torch.float16)
