"""Known deviations of third-party targets: strict xfails, each with its reason.

Keys are test ids as pytest prints them (``fnmatch`` patterns allowed). An entry turns the
matching tests into strict expected failures: if such a test passes, the run fails, because the
list has gone stale. An entry that matches no test this backend can have is reported as a
warning (a typo, or a test that was renamed).

Some deviations need particular inputs (the float16 cosine needs a zero gradient row with
weight decay or momentum in play); the ci profile is derandomised, so whether its examples show
them is fixed until the strategies change, and a strict xfail that starts passing says so.

Every reason below was checked by running the suite, and by reading the target's source
(PyPI ``adamp`` 0.3.0: ``adamp/adamp.py``, ``adamp/sgdp.py``; ``pytorch-optimizer`` 4.1.0:
``pytorch_optimizer/optimizer/adamp.py``, ``base/optimizer.py``).
"""

from __future__ import annotations

_OFFICIAL_VIEW = (
    "channel and layer views use Tensor.view, which raises on non-contiguous parameters "
    "(channels_last, transposed)"
)
_OFFICIAL_EMPTY = "D4: raises on zero-size parameters (max() of an empty cosine tensor)"
_F16_ADAMP = (
    "D9: computes in float16 with float16 state: g*g overflows to inf for |g| > 256 and "
    "eps = 1e-8 rounds to 0, so the step becomes inf, or 0/0 = NaN for a zero gradient"
)
_F16_COSINE = (
    "D9: F.cosine_similarity in float16 returns NaN for a zero gradient row (its eps rounds "
    "to 0), so no view fires where the reference's cos = 0 does (D4): r stays 1 and the "
    "update is not projected"
)

KNOWN_DEVIATIONS: dict[str, dict[str, str]] = {
    "official": {
        "test_trajectory[sgdp-paper-buffer-*]": (
            "D6: with nesterov=False the momentum buffer is the update and is projected in place "
            "(sgdp.py: d_p = buf; perturb -= ...), so the stored buffer is projected; it matches "
            "the reference's project_buffer=True (passing in sgdp-projected-buffer)"
        ),
        "test_trajectory[*-zero-size-*]": _OFFICIAL_EMPTY,
        "test_trajectory[*-strided-*]": _OFFICIAL_VIEW,
        "test_trajectory[adamp*-float16]": _F16_ADAMP,
        "test_trajectory[sgdp-projected-buffer-float16]": _F16_COSINE,
        "test_rejects_invalid[*]": (
            "validates no hyperparameter: constructs and steps with any value (a negative weight "
            "decay is skipped by `if weight_decay > 0`)"
        ),
    },
    "pytorch-optimizer": {
        "test_trajectory[adamp*]": (
            "D5: eps is added before the bias correction: den = (sqrt(v) + eps) / sqrt(1 - b2^t) "
            "(adamp.py: exp_avg_sq.sqrt().add_(eps).reciprocal_().mul_(bias_correction2_sq))"
        ),
        "test_trajectory[sgdp-projected-buffer-*]": (
            "D6: always keeps the paper's unprojected buffer (d_p = buf.clone()); has no option "
            "to reproduce the official in-place projection"
        ),
        "test_trajectory[sgdp-zero-size-*]": _OFFICIAL_EMPTY,
        "test_trajectory[sgdp-strided-*]": _OFFICIAL_VIEW,
        "test_trajectory[sgdp-paper-buffer-float16]": _F16_COSINE,
        "test_rejects_invalid[*-lr]": "raises NegativeLRError, not a ValueError; accepts nan",
        "test_rejects_invalid[*-eps]": "accepts eps = 0, nan and inf",
        "test_rejects_invalid[*-weight_decay]": "accepts nan and inf weight decay",
        "test_rejects_invalid[*-delta]": "does not validate delta",
        "test_rejects_invalid[sgdp-momentum]": "does not validate momentum",
        "test_rejects_invalid[sgdp-dampening]": "does not validate dampening",
        "test_rejects_invalid[sgdp-nesterov-without-momentum]": "does not check the rule",
    },
}
