"""This project's PyTorch adapter, ``adamp_torch.AdamP`` / ``SGDP``: as it runs (on a CPU, its C
step where it is built), and with the C step off (the torch ops that CUDA devices take)."""

from __future__ import annotations

import os
from typing import Any

from ._torch_common import TorchDriverBase


class TorchDriver(TorchDriverBase):
    name = "adamp_torch"
    channel_axes = None
    names = {"beta1": "betas[0]", "beta2": "betas[1]"}  # noqa: RUF012

    def __init__(self) -> None:
        import adamp_torch

        self.version = getattr(adamp_torch, "__version__", "0.1.0")

    def optimizer_class(self, optimizer: str):
        import adamp_torch

        return {"adamp": adamp_torch.AdamP, "sgdp": adamp_torch.SGDP}[optimizer]

    def translate(self, optimizer: str, hp: dict[str, Any], channel_axis: int) -> dict[str, Any]:
        return {**hp, "channel_axis": channel_axis}

    def setup(self, device: str) -> None:
        from adamp_torch import _native

        super().setup(device)
        if device == "cpu":  # which of the two implementations a CPU run checks
            path = "C step" if _native.library() is not None else f"torch ops: {_native.status()}"
            self.name = f"adamp_torch ({path})"


class TorchOpsDriver(TorchDriver):
    """``adamp_torch`` with its C step turned off (``ADAMP_TORCH_NATIVE=0``): on a CPU, the
    torch-ops path that CUDA devices and machines without a C compiler take."""

    def setup(self, device: str) -> None:
        from adamp_torch import _native

        os.environ["ADAMP_TORCH_NATIVE"] = "0"
        _native.reset()
        super().setup(device)
