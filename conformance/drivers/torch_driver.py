"""This project's PyTorch adapter, ``adamp_torch.AdamP`` / ``SGDP``."""

from __future__ import annotations

from typing import Any

from conformance.drivers._torch_common import TorchDriverBase


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
