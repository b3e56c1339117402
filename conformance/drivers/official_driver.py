"""The official implementation, PyPI ``adamp`` 0.3.0 (clovaai/AdamP), on PyTorch.

It has no ``channel_axis`` (the channel view is always axis 0) and no ``project_buffer``: its
SGDP always behaves as the reference's ``project_buffer=True`` (D6), and a case asking for the
paper's buffer is run as it is, so the difference shows (a known deviation).
"""

from __future__ import annotations

from importlib.metadata import version

from ._torch_common import TorchDriverBase


class OfficialDriver(TorchDriverBase):
    name = "adamp (official)"
    version = version("adamp")
    channel_axes = (0,)
    names = {"beta1": "betas", "beta2": "betas"}  # noqa: RUF012

    def optimizer_class(self, optimizer: str):
        import adamp

        return {"adamp": adamp.AdamP, "sgdp": adamp.SGDP}[optimizer]
