r"""AdamP and SGDP: a NumPy reference (Heo et al., ICLR 2021, arXiv:2006.08217).

This package is the oracle every adapter is checked against, and the text to learn the
algorithm from. It is pure NumPy, never writes its inputs, and float64 is its ground truth.

Why
===
A weight ``w`` followed by a normalisation layer is *scale-invariant*: ``L(c w) = L(w)`` for
``c > 0``. Its gradient is then orthogonal to ``w``, so a plain gradient step can only grow
``|w|``, and the effective step size ``lr / |w|^2`` shrinks. Momentum makes the growth much
faster: the accumulated direction has a radial component. AdamP and SGDP detect such weights
and remove the radial component of the update (the projection ``Pi``).

The algorithm
=============
For a parameter ``p`` with ``ndim >= 2`` and raw gradient ``g``; ``<.,.>`` and ``|.|`` are
taken row by row. Labels are cited by the code.

Projection ``Pi(p, g, u)`` (``projection.py``)::

    (P1) views, tried in order: "channel" -> one row per slice along channel_axis
                                "layer"   -> one row holding the whole tensor
    (P2) cos_i = |<g_i, p_i>| / (max(|g_i|, eps) * max(|p_i|, eps))
    (P3) the view fires iff  max_i cos_i < delta / sqrt(n),   n = row length
    (P4) p_hat_i = p_i / (|p_i| + eps);     u_i <- u_i - p_hat_i <p_hat_i, u_i>
    (P5) r = wd_ratio if a view fired (the first one wins), else r = 1

AdamP (``adamp.py``)::

    (A1) t <- t + 1
    (A2) m <- b1 m + (1 - b1) g
    (A3) v <- b2 v + (1 - b2) g^2
    (A4) den = sqrt(v) / sqrt(1 - b2^t) + eps
    (A5) u = m / den          nesterov: u = (b1 m + (1 - b1) g) / den
    (A6) u, r = Pi(p, g, u)   if ndim >= 2, else r = 1
    (A7) p <- p (1 - lr wd r)
    (A8) p <- p - lr / (1 - b1^t) u

SGDP (``sgdp.py``)::

    (S1) b <- mu b + (1 - dampening) g          (b starts at 0)
    (S2) u = g + mu b if nesterov else b
    (S3) u, r = Pi(p, g, u)   if ndim >= 2, else r = 1
    (S4) p <- p (1 - lr wd r / (1 - mu))
    (S5) p <- p - lr u
    (S6) the stored buffer is b; with project_buffer (and not nesterov) it is the projected u

Decisions where the paper is silent or the implementations disagree
===================================================================
D1  Cosine as (P2): what the official code (PyPI ``adamp`` 0.3.0) computes through
    ``F.cosine_similarity`` under PyTorch >= 1.12. Older forms differ only for row norms near eps.
D2  Absolute value in (P2): the paper's equation omits it; the authors confirmed the code (with
    abs) in the official repository's issue 6.
D3  Views: channel first, layer second, first that fires wins. The channel view groups by the
    *output-channel* axis of the framework's layout (``channel_axis``; 0 for PyTorch, -1 for
    Keras/Flax kernels, -2 for Keras transposed convolutions).
D4  Eligibility: ndim <= 1 is never projected. Zero-size tensors: nothing to update, no error.
    An all-zero gradient or weight gives cos = 0, so the view fires (a no-op on u) and
    r = wd_ratio, as in every port.
D5  Adam part exactly as official and ``torch.optim.Adam``: eps after bias correction (A4), bias
    correction 1 through the step size (A8), nesterov with the updated m (A5).
D6  SGDP buffer: the paper never projects the stored buffer (default). The official code
    projects it in place when nesterov is off; ``project_buffer=True`` reproduces that.
D7  Weight decay: decoupled, multiplicative, before the step, from the parameter before the
    update; SGDP divides by (1 - mu) as the official code does. Negative decay is rejected.
D8  Operation order mirrors the official code, so float64 trajectories agree to a few ulps.
D9  Low precision: float16 / bfloat16 parameters are computed in float32 and stored back in
    their own dtype; their state is kept in float32 (float16 moments underflow: g^2 < 6e-8).
D10 Edges of the dtype: the decision is this arithmetic in the compute dtype. A row sum that
    overflows is inf, one that underflows is 0; inf/inf and 0/0 give NaN, and a view whose
    largest cosine is NaN does not fire. An implementation that accumulates in a wider type
    rounds each row sum to the compute dtype before deciding (docs/algorithm.md, section 6).

Non-finite gradients propagate as in Adam: a NaN or inf gradient makes the cosine NaN, no view
fires (NaN < x is false), and the NaN reaches the parameter through (A8) / (S5).
"""

from adamp_core._hyperparams import (
    ADAMP_DEFAULTS,
    SGDP_DEFAULTS,
    check_channel_axis,
    check_grad_shape,
    validate_hyperparameters,
)
from adamp_core.adamp import AdamPState, adamp_init, adamp_step
from adamp_core.projection import Decision, Projection, decide, projection
from adamp_core.sgdp import SGDPState, sgdp_init, sgdp_step

__version__ = "0.1.0"

__all__ = [
    "ADAMP_DEFAULTS",
    "SGDP_DEFAULTS",
    "AdamPState",
    "Decision",
    "Projection",
    "SGDPState",
    "adamp_init",
    "adamp_step",
    "check_channel_axis",
    "check_grad_shape",
    "decide",
    "projection",
    "sgdp_init",
    "sgdp_step",
    "validate_hyperparameters",
]
