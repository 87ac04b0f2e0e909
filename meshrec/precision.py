"""Numeric precision of a run: `train.amp` → an autocast dtype, and the one autocast context.

Training, validation, `eval`, `predict` and the feature-cache build all run the model under
`autocast(device, amp_dtype(cfg.train.amp, device))`; the body model and the regressor's
parameter update run under `autocast(device)` (None: autocast off, float32).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from meshrec.errors import MeshrecError


def amp_dtype(setting: str, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype of `train.amp` on `device`, or None for full float32."""
    if setting == "off":
        return None
    if device.type == "cuda":
        if setting == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if setting == "bf16" and not torch.cuda.is_bf16_supported():
            raise MeshrecError("train.amp=bf16 but this GPU has no bfloat16; use fp16 or auto")
        return torch.bfloat16 if setting == "bf16" else torch.float16
    if setting == "fp16":
        raise MeshrecError("train.amp=fp16 needs a CUDA device; on CPU use bf16 or off")
    return torch.bfloat16 if setting == "bf16" else None  # auto on CPU: full precision


def dtype_name(dtype: Optional[torch.dtype]) -> str:
    """'bfloat16', 'float16', or 'float32' for None (what a feature cache records)."""
    return str(dtype).replace("torch.", "") if dtype is not None else "float32"


def autocast(device: Union[torch.device, str],
             dtype: Optional[torch.dtype] = None) -> torch.autocast:
    """Autocast to `dtype` on `device` (a device or its type), or autocast off (float32) for None,
    also inside an enclosing autocast region."""
    kind = device if isinstance(device, str) else device.type
    return torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None)
