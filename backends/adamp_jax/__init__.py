"""AdamP and SGDP as optax transformations (JAX adapter of ``adamp_core``).

``adamp`` and ``sgdp`` are complete optimizers; ``scale_by_adamp`` and ``scale_by_sgdp`` are the
building blocks for ``optax.chain``. Every ``update`` needs ``params``. ``channel_axis``
defaults to -1, the output-channel axis of Flax and Haiku kernels; Equinox users pass 0.
``decide`` returns the per-leaf projection decision the optimizers take (for monitoring).
State fields carry optax's names (``count``, ``mu``, ``nu``, ``trace``); ``TORCH_STATE_NAMES``
maps them to the PyTorch state keys.
"""

from adamp_jax._alias import adamp, sgdp
from adamp_jax._projection import VIEWS
from adamp_jax._transform import (
    TORCH_STATE_NAMES,
    ScaleByAdamPState,
    ScaleBySGDPState,
    decide,
    scale_by_adamp,
    scale_by_sgdp,
)

__all__ = [
    "TORCH_STATE_NAMES",
    "VIEWS",
    "ScaleByAdamPState",
    "ScaleBySGDPState",
    "adamp",
    "decide",
    "scale_by_adamp",
    "scale_by_sgdp",
    "sgdp",
]
