"""AdamP and SGDP for PyTorch: drop-in for ``adamp.AdamP`` / ``adamp.SGDP``, free of host syncs.

Semantics are those of the NumPy reference ``adamp_core`` (decisions D1-D9); hyperparameters
go through its validator. On CPUs a param group's step runs in a small C library built on
first use (``adamp_torch._native``: two passes per tensor); elsewhere, and where it cannot be
built, in multi-tensor torch ops (``torch._foreach_*``) over parameters grouped by device and
dtype. float16/bfloat16 parameters are stepped in float32 with float32 state.

Reading which projection view fired, without a host synchronisation::

    counter = ViewCounter(opt)        # records every step from now on
    ...                               # train
    counter.shares(dict(model.named_parameters()))   # one host read, here
"""

from adamp_torch.adamp import AdamP
from adamp_torch.checkpoint import to_official_state_dict
from adamp_torch.sgdp import SGDP
from adamp_torch.views import ViewCounter

__all__ = ["SGDP", "AdamP", "ViewCounter", "to_official_state_dict"]
