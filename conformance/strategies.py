"""Hypothesis strategies of the suite: every input is drawn here, bounded and documented.

A drawn ``Case`` is plain data (shapes, hyperparameters, gradient kinds and one values seed);
``conformance.harness`` turns it into arrays. Its ``repr`` is valid Python, so a failing case is
copied into ``python -m conformance.repro --backend=NAME "Case(...)"`` as printed.

Bounds, and why:
- shapes: 0-D to 5-D, each dimension 1-5 (0 in the zero-size scenarios), at most 240 elements,
  so one example runs in milliseconds and a row is never longer than 240 (the near-tie band of
  ``harness`` grows with the row length);
- values: standard normal times a scale in {1e-2, 1, 10} (parameters) and {1e-2, 1, 100}
  (gradients), far from float32 underflow of ``g*g``. Adam's ``m / (sqrt(v) + eps)`` can still
  grow past float16's 65504 (b2 = 0 and a zero gradient leave ``m / eps``); the harness then
  ends that parameter's comparison and counts it;
- hyperparameters: their valid ranges (``adamp_core._hyperparams``), cut where an optimizer
  stops being one (lr <= 0.5, weight_decay <= 0.5, momentum <= 0.95), with the edges 0 and 1
  drawn on purpose; off float64 they are rounded to float32 so that a framework holding them in
  float32 sees the same number as the reference.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

OPTIMIZERS = ("adamp", "sgdp")
DTYPES = ("float64", "float32", "float16", "bfloat16")
MAX_STEPS = 8
MAX_ELEMENTS = 240

# Gradient constructors (``harness.make_gradient``), by the branch they aim at:
#   channel   - orthogonal to every channel row (a scale-invariant layer's gradient)
#   layer     - orthogonal to the whole tensor only; each row strongly aligned
#   none      - aligned with every row and the whole (|cos| about 0.7)
#   threshold - every channel row at a chosen fraction of the threshold (0.5, 0.9, 1.1, 2)
#   generic   - standard normal (reaches the layer view about 8% of the time)
#   zero      - all zeros (cos = 0: the view fires, D4)
GRADIENT_KINDS = ("channel", "layer", "none", "threshold", "generic", "zero")
_KIND_WEIGHTS = {"channel": 6, "layer": 8, "none": 4, "threshold": 3, "generic": 2, "zero": 4}
THRESHOLD_FRACTIONS = (0.5, 0.9, 1.1, 2.0)


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its shape, value scales and the gradient kind of every step.

    ``layout`` is ``"contiguous"`` or ``"strided"`` (a non-contiguous tensor: channels_last for
    4-D, reversed strides otherwise; drivers without strided tensors skip such cases).
    ``zero_row`` zeroes the first channel row of the initial value (D4). ``sparse_rows``: the
    gradient has only some rows (along axis 0), given also as ``SparseRows`` with repeated
    indices (``harness.prepare``).
    """

    shape: tuple[int, ...]
    kinds: tuple[str, ...]
    scale: float = 1.0
    grad_scale: float = 1.0
    zero_row: bool = False
    layout: str = "contiguous"
    sparse_rows: bool = False


@dataclass(frozen=True)
class Group:
    """A param group: hyperparameters in the reference's spelling, and its channel axis."""

    hyperparams: dict[str, Any]
    channel_axis: int
    params: tuple[ParamSpec, ...]


@dataclass(frozen=True)
class Case:
    """Everything one example runs: the values come from ``seed`` (see ``harness``)."""

    optimizer: str
    dtype: str
    steps: int
    seed: int
    groups: tuple[Group, ...] = field(default_factory=tuple)

    @property
    def params(self) -> list[tuple[Group, ParamSpec]]:
        return [(g, p) for g in self.groups for p in g.params]


@dataclass(frozen=True)
class Scenario:
    """A named restriction of the case strategy; test ids carry its name."""

    optimizer: str
    zero_size: bool = False  # at least one parameter has a zero-size dimension
    strided: bool = False  # at least one parameter is non-contiguous
    project_buffer: bool = False  # SGDP only (D6)
    sparse: bool = False  # one parameter's gradient has only some rows (drivers with "rows")


SCENARIOS: dict[str, Scenario] = {
    "adamp": Scenario("adamp"),
    "adamp-zero-size": Scenario("adamp", zero_size=True),
    "adamp-strided": Scenario("adamp", strided=True),
    "sgdp-paper-buffer": Scenario("sgdp"),
    "sgdp-projected-buffer": Scenario("sgdp", project_buffer=True),
    "sgdp-zero-size": Scenario("sgdp", zero_size=True),
    "sgdp-strided": Scenario("sgdp", strided=True),
    "adamp-sparse-rows": Scenario("adamp", sparse=True),
    "sgdp-sparse-rows": Scenario("sgdp", sparse=True),
}

# ---------------------------------------------------------------------------------------------
# Shapes


@st.composite
def shapes(draw, *, min_ndim: int = 0, max_ndim: int = 5, zero_size: bool = False):
    """Shapes of 0 to 5 dimensions, each 1-5 (size-1 included), at most MAX_ELEMENTS elements.

    With ``zero_size`` one dimension is 0 (and ndim >= 1).
    """
    ndim = draw(st.integers(max(min_ndim, 1 if zero_size else 0), max_ndim))
    dims = []
    for _ in range(ndim):
        cap = max(1, MAX_ELEMENTS // max(1, math.prod(dims)))
        dims.append(draw(st.integers(1, min(5, cap))))
    if zero_size:
        dims[draw(st.integers(0, ndim - 1))] = 0
    return tuple(dims)


# ---------------------------------------------------------------------------------------------
# Hyperparameters


def _f32(x: float) -> float:
    return float(np.float32(x))


def _unit(lo: float, hi: float, edges: tuple[float, ...]) -> st.SearchStrategy[float]:
    """The edges, or a float in [lo, hi] on a 1e-7 grid (no subnormal or tiny values: XLA on
    CPU flushes float32 subnormals to zero, and a threshold of 1e-38 tests nothing new)."""
    return st.one_of(
        st.sampled_from(edges), st.floats(lo, hi).map(lambda x: min(max(round(x, 7), lo), hi))
    )


def lrs() -> st.SearchStrategy[float]:
    """lr in [0, 0.5]: the edge 0, typical values, and log-uniform draws from [1e-4, 0.5]."""
    return st.one_of(
        st.sampled_from((0.0, 1e-3, 1e-2, 0.1, 0.5)),
        st.floats(-4, math.log10(0.5)).map(lambda e: 10.0**e),
    )


def epsilons() -> st.SearchStrategy[float]:
    """eps in (0, 0.1]: the default 1e-8 and large values where its placement matters (D5)."""
    return st.one_of(
        st.sampled_from((1e-8, 1e-6, 1e-3, 0.1)), st.floats(-8, -1).map(lambda e: 10.0**e)
    )


def deltas() -> st.SearchStrategy[float]:
    """delta in [0, 1]: 0 never fires (an exact tie with a zero cosine); 0.1 is the default."""
    return _unit(0.0, 1.0, (0.0, 0.0, 0.1, 0.1, 0.5, 1.0))


@st.composite
def adamp_hyperparams(draw, *, f32: bool = False) -> dict[str, Any]:
    """AdamP hyperparameters over their valid ranges (reference spelling)."""
    hp = {
        "lr": draw(lrs()),
        "betas": (
            draw(_unit(0.0, 0.99, (0.0, 0.9, 0.9))),
            draw(_unit(0.0, 0.9999, (0.0, 0.999, 0.999, 0.9999))),
        ),
        "eps": draw(epsilons()),
        "weight_decay": draw(_unit(0.0, 0.5, (0.0, 0.0, 0.01, 0.5))),
        "delta": draw(deltas()),
        "wd_ratio": draw(_unit(0.0, 1.0, (0.0, 0.1, 1.0))),
        "nesterov": draw(st.booleans()),
    }
    return _round_f32(hp) if f32 else hp


@st.composite
def sgdp_hyperparams(draw, *, project_buffer: bool = False, f32: bool = False) -> dict[str, Any]:
    """SGDP hyperparameters over their valid ranges; nesterov implies momentum > 0, dampening 0.

    nesterov is drawn a third of the time: without it the buffer's handling (D6) is visible.
    """
    nesterov = draw(st.sampled_from((False, True, False)))
    momentum = draw(_unit(0.0, 0.95, (0.0, 0.9, 0.9, 0.95)))
    if nesterov and momentum == 0.0:
        momentum = 0.9
    hp = {
        "lr": draw(lrs()),
        "momentum": momentum,
        "dampening": 0.0 if nesterov else draw(_unit(0.0, 1.0, (0.0, 0.0, 0.5, 1.0))),
        "weight_decay": draw(_unit(0.0, 0.5, (0.0, 0.0, 0.01, 0.5))),
        "nesterov": nesterov,
        "eps": draw(epsilons()),
        "delta": draw(deltas()),
        "wd_ratio": draw(_unit(0.0, 1.0, (0.0, 0.1, 1.0))),
        "project_buffer": project_buffer,
    }
    return _round_f32(hp) if f32 else hp


def _round_f32(hp: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in hp.items():
        if isinstance(v, bool):
            out[k] = v
        elif isinstance(v, tuple):
            out[k] = tuple(_f32(x) for x in v)
        else:
            out[k] = _f32(v)
    if out.get("nesterov") and out.get("momentum", 1.0) == 0.0:  # a tiny momentum rounded to 0
        out["momentum"] = _f32(0.9)
    return out


# ---------------------------------------------------------------------------------------------
# Cases


def gradient_kinds(*, delta_zero: bool = False) -> st.SearchStrategy[str]:
    """A gradient kind, weighted so that each branch is reached in well over 20% of examples.

    With ``delta_zero`` no view can fire except on an exact tie, ``max cos = 0 = threshold``,
    which strict ``<`` refuses (P3): zero gradients, which make it, are then drawn a third of the
    time.
    """
    weights = dict(_KIND_WEIGHTS, zero=15) if delta_zero else _KIND_WEIGHTS
    return st.sampled_from([k for k, w in weights.items() for _ in range(w)])


@st.composite
def param_specs(
    draw,
    *,
    steps: int,
    zero_size: bool = False,
    strided: bool = False,
    delta_zero: bool = False,
    eligible: bool = False,
):
    """One parameter: a shape, scales, and a gradient kind per step (``eligible``: ndim >= 2)."""
    shape = draw(shapes(zero_size=zero_size, min_ndim=2 if strided or eligible else 0))
    return ParamSpec(
        shape=shape,
        kinds=tuple(draw(gradient_kinds(delta_zero=delta_zero)) for _ in range(steps)),
        scale=draw(st.sampled_from((1.0, 1.0, 1e-2, 10.0))),
        grad_scale=draw(st.sampled_from((1.0, 1.0, 1e-2, 100.0))),
        zero_row=len(shape) >= 2 and draw(st.integers(0, 9)) == 0,
        layout="strided" if strided else "contiguous",
    )


@st.composite
def cases(
    draw,
    scenario: Scenario,
    dtype: str,
    *,
    channel_axes: tuple[int, ...] = (0, 1, -1, -2),
    default_axis: int = 0,
    max_steps: int = MAX_STEPS,
) -> Case:
    """A whole example: 1-2 groups of 1-3 parameters, 1 to ``max_steps`` steps.

    Args:
      scenario: which optimizer and which special inputs (zero-size, strided, project_buffer).
      dtype: the parameters' dtype (hyperparameters rounded to float32 off float64).
      channel_axes: the axes the implementation accepts; the layout's default ``default_axis``
        is drawn half of the time.
      max_steps: trajectory length bound.
    """
    steps = draw(st.integers(1, max_steps))
    f32 = dtype != "float64"
    n_groups = draw(st.integers(1, 2))
    special = (
        draw(st.integers(0, n_groups - 1))
        if (scenario.zero_size or scenario.strided or scenario.sparse)
        else -1
    )
    groups = []
    for gi in range(n_groups):
        if scenario.optimizer == "adamp":
            hp = draw(adamp_hyperparams(f32=f32))
        else:
            hp = draw(sgdp_hyperparams(project_buffer=scenario.project_buffer, f32=f32))
        axis = draw(st.one_of(st.just(default_axis), st.sampled_from(channel_axes)))
        n = draw(st.integers(1, 3))
        dz = hp["delta"] == 0.0
        # The first parameter of an example is projection-eligible, so that every example can
        # reach the branches; the others are of any rank.
        specs = [
            draw(param_specs(steps=steps, delta_zero=dz, eligible=gi == 0 and j == 0))
            for j in range(n)
        ]
        if gi == special:
            specs[0] = draw(
                param_specs(
                    steps=steps,
                    zero_size=scenario.zero_size,
                    strided=scenario.strided,
                    delta_zero=dz,
                    eligible=scenario.sparse,
                )
            )
            if scenario.sparse:
                specs[0] = dataclasses.replace(specs[0], sparse_rows=True)
        groups.append(Group(hp, axis, tuple(specs)))
    seed = draw(st.integers(0, 2**32 - 1))
    return Case(scenario.optimizer, dtype, steps, seed, tuple(groups))


# ---------------------------------------------------------------------------------------------
# Invalid hyperparameters

_NAN, _INF = float("nan"), float("inf")

# argument -> values outside its range (adamp_core._hyperparams), each paired with valid others.
INVALID_VALUES: dict[str, tuple[Any, ...]] = {
    "lr": (-1e-3, -1.0, _NAN, _INF),
    "beta1": (-0.1, 1.0, 1.5, _NAN),
    "beta2": (-0.1, 1.0, 2.0, _NAN),
    "eps": (0.0, -1e-8, _NAN, _INF),
    "weight_decay": (-1e-4, -1.0, _NAN, _INF),
    "delta": (-0.1, -1.0, _NAN, _INF),
    "wd_ratio": (-0.1, 1.5, _NAN),
    "momentum": (-0.1, 1.0, 1.5, _NAN),
    "dampening": (-0.1, 1.5, _NAN),
}
INVALID_ARGUMENTS = {
    "adamp": ("lr", "beta1", "beta2", "eps", "weight_decay", "delta", "wd_ratio"),
    "sgdp": (
        "lr",
        "eps",
        "weight_decay",
        "delta",
        "wd_ratio",
        "momentum",
        "dampening",
        "nesterov-without-momentum",
    ),
}


@st.composite
def invalid_hyperparams(
    draw, optimizer: str, argument: str, *, negative_lr: bool = False
) -> tuple[dict[str, Any], str]:
    """Valid hyperparameters except ``argument``; returns them and the reference name to blame.

    ``negative_lr``: a negative learning rate counts as valid (``Driver.negative_lr``).
    """
    hp = draw(adamp_hyperparams() if optimizer == "adamp" else sgdp_hyperparams())
    hp["lr"] = max(hp["lr"], 1e-3)
    if argument == "nesterov-without-momentum":
        hp.update(nesterov=True, momentum=0.0, dampening=0.0)
        return hp, "nesterov"
    values = INVALID_VALUES[argument]
    if argument == "lr" and negative_lr:
        values = tuple(v for v in values if not v < 0)
    value = draw(st.sampled_from(values))
    if argument in ("beta1", "beta2"):
        b = list(hp["betas"])
        b[argument == "beta2"] = value
        hp["betas"] = tuple(b)
        return hp, argument
    if argument == "momentum":
        hp["nesterov"] = False
    hp[argument] = value
    return hp, argument
