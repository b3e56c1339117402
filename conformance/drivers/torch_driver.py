"""This project's PyTorch adapter, ``adamp_torch.AdamP`` / ``SGDP``, once per implementation: as
it runs (``impl=None``: on a CPU, its native C step where it is built and can take a group), and
with ``impl="foreach"`` (the torch ops that CUDA devices take)."""

from __future__ import annotations

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

    impl: str | None = None  # the optimizers' impl= argument

    def translate(self, optimizer: str, hp: dict[str, Any], channel_axis: int) -> dict[str, Any]:
        return {**hp, "channel_axis": channel_axis, "impl": self.impl}

    def setup(self, device: str) -> None:
        from adamp_torch import _native

        super().setup(device)
        if device == "cpu" and self.impl is None:  # which implementation a CPU run checks
            path = "native" if _native.library() is not None else f"foreach: {_native.status()}"
            self.name = f"adamp_torch (impl=None: {path})"


class TorchOpsDriver(TorchDriver):
    """``adamp_torch`` with ``impl="foreach"``: on a CPU, the torch ops that CUDA devices,
    DTensor parameters and machines without a C compiler take."""

    name = "adamp_torch (impl='foreach')"
    impl = "foreach"
