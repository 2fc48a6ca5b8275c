"""Where torch runs: ``--device cpu|cuda|cuda:N|auto``, mixed precision, CPU threads.

One place for what the detector and the embedder share:

- :func:`resolve_device` turns a device name into a :class:`torch.device`, with a one-line
  error when CUDA is asked for and absent, and ``auto`` falling back to the CPU with a note;
- :func:`autocast` is mixed precision on CUDA (bfloat16 where the GPU has it, else float16
  with a :func:`grad_scaler`) and a no-op on the CPU, so CPU results stay exactly float32;
- :func:`loader_options` gives pinned memory and DataLoader workers on CUDA only;
- :func:`torch_threads` sets torch's CPU thread count for a block and restores it after, so a
  ``fit`` in a notebook kernel or the dashboard does not change the process's setting.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from .errors import LabError

__all__ = ["DeviceError", "resolve_device", "autocast", "grad_scaler", "loader_options",
           "torch_threads", "amp_dtype"]


class DeviceError(LabError, ValueError):
    """A device that is unknown or not available on this machine."""


def resolve_device(name: str | None, *, quiet: bool = False) -> Any:
    """The :class:`torch.device` for ``name`` (``cpu``, ``cuda``, ``cuda:N`` or ``auto``).

    ``auto`` is the first CUDA GPU when torch sees one, else the CPU (and says so on stderr
    unless ``quiet``). Under ``torchrun`` a bare ``cuda`` means the process's own GPU
    (``cuda:$LOCAL_RANK``).

    Raises
    ------
    DeviceError
        An unknown name, or CUDA asked for on a machine where torch sees no GPU.
    """
    import torch

    text = str(name or "cpu").strip().lower()
    local = os.environ.get("LOCAL_RANK")
    if text == "auto":
        if torch.cuda.is_available():
            text = "cuda"
        else:
            if not quiet:
                print("device auto: no CUDA GPU visible to torch, running on the CPU",
                      file=sys.stderr)
            return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {name}: CUDA is not available (torch {torch.__version__} sees no GPU"
                f"{'' if torch.version.cuda else '; this torch was built without CUDA'}); "
                "use --device cpu or --device auto"
            )
        if text == "cuda":
            index = int(local) if local is not None else 0
        else:
            try:
                index = int(text.split(":", 1)[1])
            except ValueError:
                raise DeviceError(f"--device {name}: expected cuda:N with a number N") from None
        n = torch.cuda.device_count()
        if not 0 <= index < n:
            raise DeviceError(f"--device {name}: GPU {index} does not exist (torch sees {n})")
        return torch.device("cuda", index)
    raise DeviceError(f"--device {name}: unknown device; use cpu, cuda, cuda:N or auto")


def amp_dtype(device: Any) -> Any:
    """The mixed-precision dtype on ``device``: bfloat16 or float16 on CUDA, ``None`` on CPU."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: Any, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision for a forward pass on CUDA; nothing on the CPU."""
    import torch

    dtype = amp_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(device: Any, enabled: bool = True) -> Any:
    """A :class:`torch.amp.GradScaler`, active only for float16 on CUDA (bfloat16 needs none)."""
    import torch

    return torch.amp.GradScaler("cuda", enabled=bool(enabled) and amp_dtype(device)
                                == torch.float16)


def loader_options(device: Any, workers: int | None = None) -> dict[str, Any]:
    """DataLoader keywords: pinned memory and worker processes on CUDA, none on the CPU.

    On a CPU the workers would compete with torch's own threads for the same cores; on a GPU
    they keep it fed. ``workers`` overrides the count (CUDA default: up to 4, fewer cores).
    """
    if getattr(device, "type", str(device)) != "cuda":
        return {"num_workers": int(workers or 0), "pin_memory": False}
    n = int(workers) if workers is not None else min(4, max(1, (os.cpu_count() or 2) - 1))
    opts: dict[str, Any] = {"num_workers": n, "pin_memory": True}
    if n > 0:
        opts["persistent_workers"] = False
    return opts


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (when ``n``) and restore the old count."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)
