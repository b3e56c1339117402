"""``pytorch-optimizer`` 4.1.0 (kozistr), ``pytorch_optimizer.AdamP`` / ``SGDP``, on PyTorch.

Its AdamP counts the bias-correction step per param group (``group["step"]``), read here as the
step of every parameter of the group. It has no ``channel_axis`` (axis 0) and no
``project_buffer`` (the paper's buffer, always). Its defaults (``weight_decouple=True``,
``fixed_decay=False``, ``foreach=False``) are the decoupled decay of the reference.
"""

from __future__ import annotations

from importlib.metadata import version

from ._torch_common import TorchDriverBase


class PytorchOptimizerDriver(TorchDriverBase):
    name = "pytorch-optimizer"
    version = version("pytorch-optimizer")
    channel_axes = (0,)
    names = {"beta1": "beta1", "beta2": "beta2"}  # noqa: RUF012

    def optimizer_class(self, optimizer: str):
        from pytorch_optimizer import SGDP, AdamP

        return {"adamp": AdamP, "sgdp": SGDP}[optimizer]
