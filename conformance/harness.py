"""The core property: an implementation's trajectory follows the float64 reference.

``check_case(driver, case)`` makes the arrays of a drawn ``Case``, runs the float64 reference
(``adamp_core``) and the driver, and compares parameters and normalised state after every step.

Gradients are built along the reference trajectory: the gradient of step k is made from the
reference's parameter at step k by the constructor of ``ParamSpec.kinds[k]`` (so a "channel"
gradient stays orthogonal as the weight moves), rounded to the case's dtype, and then given to
both sides unchanged. Each side follows its own trajectory.

Near-ties. At step k the decision of the implementation depends on its own parameter, which
differs from the reference's by rounding. Before each step the reference decides on both
parameters (``adamp_core.decide``, in float64). The step counts as a *legitimate divergence*
when the two decisions differ, or when a margin that decides lies within ``tie_band`` of zero
(the rounding a dot product of that length can make in the compute dtype). If the compared
values then disagree, that parameter is no longer compared (its trajectory has legitimately
left the reference's); any other disagreement is a failure. Tolerances are never widened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import adamp_core
from adamp_core.projection import Decision, rows, unrows
from adamp_core.testing import branch_gradient

from .drivers import Driver, Output, Problem, ProblemGroup, SparseRows, numpy_dtype
from .strategies import THRESHOLD_FRACTIONS, Case, ParamSpec
from .tolerances import tolerance

STATE_KEYS = {"adamp": ("step", "exp_avg", "exp_avg_sq"), "sgdp": ("momentum_buffer",)}


class ConformanceFailure(AssertionError):
    """A mismatch, with everything needed to reproduce it."""


@dataclass
class CaseStats:
    """What one example reached and how far it was from the reference."""

    branches: set[str] = field(default_factory=set)  # "channel", "layer", "none"
    decisions: dict[str, int] = field(default_factory=dict)
    max_abs: float = 0.0
    max_rel: float = 0.0
    ties: int = 0  # legitimate divergences that stopped a comparison
    overflows: int = 0  # reference values outside the dtype's range, which stopped one
    compared: int = 0  # (param, step) pairs compared


# ---------------------------------------------------------------------------------------------
# Inputs


def make_gradient(
    kind: str,
    p: np.ndarray,
    rng: np.random.Generator,
    axis: int,
    delta: float,
    fraction: float | None = None,
) -> np.ndarray:
    """A float64 gradient of ``kind`` (``strategies.GRADIENT_KINDS``) for the weight ``p``.

    ``fraction`` fixes the "threshold" kind's cos / threshold (default: drawn from ``rng``).
    """
    if p.size == 0:
        return np.zeros(p.shape)
    if kind == "zero":
        return np.zeros(p.shape)
    if p.ndim < 2 or kind == "generic":
        return rng.standard_normal(p.shape)
    if kind in ("channel", "layer", "none"):
        return branch_gradient(p, rng, kind, channel_axis=axis)
    # "threshold": every channel row at cos = f * delta / sqrt(row length).
    ax = axis % p.ndim
    pr = rows(p, "channel", ax)
    n = pr.shape[1]
    f = rng.choice(THRESHOLD_FRACTIONS) if fraction is None else fraction
    c = min(f * delta / math.sqrt(n), 0.99)
    z = rng.standard_normal(pr.shape)
    pn = np.linalg.norm(pr, axis=1, keepdims=True)
    p_hat = np.divide(pr, pn, out=np.zeros_like(pr), where=pn > 0)
    z = z - p_hat * np.sum(p_hat * z, axis=1, keepdims=True)
    zn = np.linalg.norm(z, axis=1, keepdims=True)
    z = np.divide(z, zn, out=np.zeros_like(z), where=zn > 0)
    sign = rng.choice((-1.0, 1.0), size=(pr.shape[0], 1))
    g = z + sign * (c / math.sqrt(1 - c * c)) * p_hat
    return unrows(g, p, "channel", ax)


def _initial(spec: ParamSpec, rng: np.random.Generator, axis: int) -> np.ndarray:
    p = rng.standard_normal(spec.shape) * spec.scale
    if spec.zero_row and p.size:
        ax = axis % p.ndim
        p = np.moveaxis(p, ax, 0).copy()
        p[0] = 0.0
        p = np.moveaxis(p, 0, ax)
    return p


def _reference_step(optimizer: str, p, g, state, hp: dict[str, Any], axis: int):
    if optimizer == "adamp":
        return adamp_core.adamp_step(p, g, state, channel_axis=axis, **hp)
    return adamp_core.sgdp_step(p, g, state, channel_axis=axis, **hp)


def _normalise(optimizer: str, state) -> dict[str, Any]:
    if optimizer == "adamp":
        return {"step": state.step, "exp_avg": state.exp_avg, "exp_avg_sq": state.exp_avg_sq}
    return {"momentum_buffer": state.momentum_buffer}


@dataclass
class Prepared:
    """A case made concrete: the driver's problem and the reference trajectory."""

    problem: Problem
    hp: list[dict[str, Any]]  # per parameter
    axes: list[int]  # per parameter
    reference: list[list[tuple[np.ndarray, dict[str, Any]]]]  # [step][param] (param, state)


def prepare(case: Case) -> Prepared:
    """Draws the values of ``case`` from its seed and runs the float64 reference."""
    rng = np.random.default_rng(case.seed)
    dt = numpy_dtype(case.dtype)
    init = adamp_core.adamp_init if case.optimizer == "adamp" else adamp_core.sgdp_init
    params, hps, axes, specs, groups, layouts = [], [], [], [], [], []
    for group in case.groups:
        start = len(params)
        for spec in group.params:
            params.append(np.asarray(_initial(spec, rng, group.channel_axis)).astype(dt))
            hps.append(group.hyperparams)
            axes.append(group.channel_axis)
            specs.append(spec)
            layouts.append(spec.layout)
        groups.append(
            ProblemGroup(
                dict(group.hyperparams),
                group.channel_axis,
                tuple(range(start, len(params))),
            )
        )
    ref_p = [p.astype(np.float64) for p in params]
    ref_s = [init(p) for p in ref_p]
    grads, reference = [], []
    sparse: list[list[SparseRows | None]] = [[None] * len(specs) for _ in range(case.steps)]
    for k in range(case.steps):
        gk, rk = [], []
        for i, spec in enumerate(specs):
            g = make_gradient(spec.kinds[k], ref_p[i], rng, axes[i], hps[i]["delta"])
            # The constructors give entries of order 1. Orthogonalising leaves rounding residue
            # (about 1e-17) where the exact value is 0, e.g. in rows of length 1; its square is
            # subnormal in float32, which frameworks flush to zero. The residue is set to the
            # exact 0 it stands for.
            g = np.where(np.abs(g) < 1e-10, 0.0, g)
            g = np.asarray(g * spec.grad_scale).astype(dt)
            if spec.sparse_rows:
                g, sparse[k][i] = _sparse_rows(g, rng)
            gk.append(g)
            ref_p[i], ref_s[i] = _reference_step(
                case.optimizer, ref_p[i], g.astype(np.float64), ref_s[i], hps[i], axes[i]
            )
            rk.append((ref_p[i], _normalise(case.optimizer, ref_s[i])))
        grads.append(gk)
        reference.append(rk)
    has_sparse = any(s is not None for row in sparse for s in row)
    problem = Problem(
        case.optimizer, case.dtype, params, grads, groups, layouts, sparse if has_sparse else []
    )
    return Prepared(problem, hps, axes, reference)


def _sparse_rows(g: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, SparseRows]:
    """Keeps some rows of ``g`` (axis 0) and gives them as ``SparseRows``: each kept row once,
    or as two halves under a repeated index, in a shuffled order, as an Embedding's gradient
    for a batch with repeated ids. A row is split only where its halves add up to it exactly
    in its dtype (not so for some subnormal float16 values), so the dense sum is ``g``'s rows.
    """
    n = g.shape[0]
    kept = np.flatnonzero(rng.random(n) < 0.5)
    dense = np.zeros_like(g)
    dense[kept] = g[kept]
    half = (dense / 2).astype(g.dtype)
    exact = np.all((half + half == dense).reshape(n, -1), axis=1)
    twice = kept[(rng.random(kept.size) < 0.5) & exact[kept]]
    indices = np.concatenate([kept, twice]).astype(np.int64)
    values = np.concatenate([dense[kept], half[twice]])
    values[np.flatnonzero(np.isin(kept, twice))] = half[kept[np.isin(kept, twice)]]
    order = rng.permutation(indices.size)
    return dense, SparseRows(indices[order], values[order], g.shape)


# ---------------------------------------------------------------------------------------------
# Comparison


def tie_band(n: int, dtype: str) -> float:
    """Rounding a length-n cosine can carry in the compute dtype (float32 off float64, D9).

    ``2 n u`` bounds the relative error of a recursively summed dot product (Higham, Accuracy
    and Stability of Numerical Algorithms, eq. 3.5), and |cos| <= 1.
    """
    u = np.finfo(np.float64 if dtype == "float64" else np.float32).eps / 2
    return 4.0 * n * u


def _near(d: Decision, shape: tuple[int, ...], axis: int, dtype: str) -> bool:
    if not math.isfinite(d.margins.channel):
        return False
    size = math.prod(shape)
    n_channel = size // shape[axis % len(shape)]
    if abs(d.margins.channel) < tie_band(n_channel, dtype):
        return True
    return d.margins.channel >= 0 and abs(d.margins.layer) < tie_band(size, dtype)


def _scale(name: str, ref: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """Elementwise magnitude a rounding error of ``name`` is measured against.

    ``extra``: for "param", the magnitudes that entered the step (see ``_entered``); for the
    state, the gradient (and for the buffer, the update before its projection).
    """
    if name == "exp_avg_sq":
        extra = extra * extra
    return np.maximum(np.abs(ref), np.abs(extra))


def _entered(optimizer: str, hp: dict[str, Any], state: dict, prev: dict | None, g: np.ndarray):
    """|update before the projection| and the largest term of the parameter's step.

    A projection can cancel most of the update: with b2 = 0 and a zero gradient, Adam's
    ``m / eps`` is of order 1e8 and leaves a small remainder after (P4). The rounding of that
    remainder is relative to what was cancelled, so the scale of the step includes it.
    """
    if optimizer == "adamp":
        (b1, b2), t = hp["betas"], state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        den = np.sqrt(v) / math.sqrt(1 - b2**t) + hp["eps"]
        u = (b1 * m + (1 - b1) * g) / den if hp["nesterov"] else m / den
        return np.abs(u), np.abs(u) * hp["lr"] / (1 - b1**t)
    mu = hp["momentum"]
    b_prev = prev["momentum_buffer"] if prev is not None else np.zeros_like(g)
    b = mu * b_prev + (1 - hp["dampening"]) * g
    u = g + mu * b if hp["nesterov"] else b
    return np.abs(u), np.abs(u) * hp["lr"]


def _describe(prepared: Prepared, i: int) -> str:
    gi = next(j for j, g in enumerate(prepared.problem.groups) if i in g.indices)
    return (
        f"param {i} (group {gi}), shape {prepared.problem.params[i].shape}, "
        f"channel_axis {prepared.axes[i]}, hyperparameters {prepared.hp[i]}"
    )


def check_case(driver: Driver, backend: str, case: Case) -> CaseStats:
    """Runs ``case`` on ``driver`` and raises ConformanceFailure on any mismatch."""
    prepared = prepare(case)
    problem = prepared.problem
    inputs = [p.copy() for p in problem.params], [[g.copy() for g in s] for s in problem.grads]
    try:
        outputs = driver.run(problem)
    except Exception as e:
        raise ConformanceFailure(
            f"{backend} raised {e!r} on this case\n{repro(backend, case)}"
        ) from e
    stats = CaseStats()
    rtol, atol = tolerance(backend, case.optimizer, case.dtype)
    n = len(problem.params)
    running: dict[tuple[int, str], tuple[np.ndarray, float]] = {}
    stopped: set[int] = set()
    for i in range(n):  # inputs are not the optimised parameters: never written
        if not _same(inputs[0][i], problem.params[i]):
            raise ConformanceFailure(
                f"{backend} wrote its input array of param {i}\n{repro(backend, case)}"
            )
    for k in range(case.steps):
        for i in range(n):
            g = problem.grads[k][i]
            if not _same(inputs[1][k][i], g):
                raise ConformanceFailure(
                    f"{backend} wrote the gradient input of param {i} at step {k + 1}\n"
                    f"{repro(backend, case)}"
                )
            out: Output = outputs[k][i]
            if out.grad is not None and not _same(np.asarray(out.grad, dtype=g.dtype), g):
                raise ConformanceFailure(
                    f"{backend} modified the gradient of param {i} during step {k + 1}\n"
                    f"{repro(backend, case)}"
                )
            if i in stopped:
                continue
            p_ref_prev = prepared.problem.params[i] if k == 0 else prepared.reference[k - 1][i][0]
            p_own_prev = problem.params[i] if k == 0 else outputs[k - 1][i].param
            hp, axis = prepared.hp[i], prepared.axes[i]
            g64 = g.astype(np.float64)
            d_ref, d_own = (
                adamp_core.decide(
                    np.asarray(before, np.float64),
                    g64,
                    delta=hp["delta"],
                    eps=hp["eps"],
                    channel_axis=axis,
                )
                for before in (p_ref_prev, p_own_prev)
            )
            if g.ndim >= 2 and g.size:
                view = d_ref.view or "none"
                stats.branches.add(view)
                stats.decisions[view] = stats.decisions.get(view, 0) + 1
            tie = hp["delta"] > 0 and (
                d_ref.view != d_own.view
                or _near(d_ref, g.shape, axis, case.dtype)
                or _near(d_own, g.shape, axis, case.dtype)
            )
            ref_p, ref_state = prepared.reference[k][i]
            if not _representable(ref_p, case.dtype):
                # float16 tops out at 65504: an update m / (sqrt(v) + eps) with a vanishing v
                # (b2 = 0, a zero gradient) can leave that range, and then the parameter has no
                # float16 value to compare. Its comparison ends here.
                stats.overflows += 1
                stopped.add(i)
                continue
            prev_state = prepared.reference[k - 1][i][1] if k else None
            u_abs, step_abs = _entered(case.optimizer, hp, ref_state, prev_state, g64)
            p_prev = np.maximum(np.abs(np.asarray(p_ref_prev, np.float64)), step_abs)
            errors_so_far = stats.max_abs, stats.max_rel
            # The parameter is rounded to its dtype after each step and goes on from there,
            # while the reference keeps float64: k + 1 roundings of up to one spacing each.
            floor = (k + 1) * ulp(ref_p, case.dtype)
            mismatch = _compare(
                "param", out.param, ref_p, p_prev, rtol, atol, running, i, stats, floor
            )
            mismatch = mismatch or _compare_state(
                case.optimizer,
                out.state,
                ref_state,
                g64,
                u_abs,
                rtol,
                atol,
                running,
                i,
                stats,
                hp.get("momentum"),
            )
            stats.compared += 1
            if mismatch is None:
                continue
            if tie:  # the diverged values are not errors: keep them out of the report
                stats.max_abs, stats.max_rel = errors_so_far
                stats.ties += 1
                stopped.add(i)
                continue
            raise ConformanceFailure(
                f"{backend}: {mismatch} after step {k + 1}, {_describe(prepared, i)}\n"
                f"  reference decision {d_ref.view} (margins {tuple(d_ref.margins)}), "
                "not a near-tie\n"
                f"  tolerance rtol={rtol:g} atol={atol:g} ({case.dtype})\n{repro(backend, case)}"
            )
    return stats


_LARGEST = {"float64": 1.79e308, "float32": 3.40e38, "float16": 65504.0, "bfloat16": 3.38e38}
# (explicit mantissa bits, smallest normal exponent) of each storage dtype
_BITS = {"float64": (52, -1022), "float32": (23, -126), "float16": (10, -14), "bfloat16": (7, -126)}


def ulp(x: np.ndarray, dtype: str) -> np.ndarray:
    """The spacing of ``dtype``'s numbers at ``|x|``, subnormals included.

    A parameter stored in ``dtype`` cannot lie closer to the float64 reference than half of
    this; near zero a float16 parameter has an absolute spacing of 2**-24 (6e-8), far above what
    rtol and atol allow for a small value.
    """
    mant, emin = _BITS[dtype]
    x = np.abs(np.asarray(x, np.float64))
    _, e = np.frexp(x)  # |x| = f 2**e with f in [0.5, 1); frexp(0) gives e = 0
    e = np.where(x > 0, e, emin + 1)
    return np.ldexp(1.0, np.maximum(e - 1, emin) - mant)


def _representable(x: np.ndarray, dtype: str) -> bool:
    """Whether every value lies within the dtype's largest finite number."""
    return bool(np.all(np.abs(x) <= _LARGEST[dtype]))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.tobytes() == b.astype(a.dtype).tobytes()


def _compare(name, x, ref, extra, rtol, atol, running, i, stats, floor=0.0) -> str | None:
    """Compares ``x`` with ``ref``: ``|x - ref| <= rtol * scale + atol * big + floor``."""
    x = np.asarray(x)
    if x.shape != ref.shape:
        return f"{name} has shape {x.shape}, reference {ref.shape}"
    x = x.astype(np.float64)
    scale = _scale(name, ref, extra)
    prev = running.get((i, name))
    if prev is not None:
        scale = np.maximum(scale, prev[0])
    big = max(float(scale.max(initial=0.0)), prev[1] if prev else 0.0)
    running[(i, name)] = (scale, big)
    err = np.abs(x - ref)
    bound = rtol * scale + atol * big + floor
    if err.size:
        stats.max_abs = max(
            stats.max_abs, float(np.nanmax(err)) if np.isfinite(err).all() else math.inf
        )
        # Relative to the magnitude the bound allows for: the test passes iff rel <= rtol.
        ref_mag = scale + (atol / rtol) * big
        rel = np.divide(err, ref_mag, out=np.zeros_like(err), where=ref_mag > 0)
        stats.max_rel = max(
            stats.max_rel, float(np.max(rel)) if np.isfinite(rel).all() else math.inf
        )
    bad = ~(err <= bound)  # NaN counts as bad
    if bad.any():
        j = (
            np.unravel_index(int(np.argmax(np.where(bad, err, -1.0))), err.shape)
            if err.ndim
            else ()
        )
        return (
            f"{name} differs at index {tuple(int(t) for t in j)}: got {x[j]!r}, reference "
            f"{ref[j]!r} (|diff| {err[j]:.3g} > bound {bound[j]:.3g}; "
            f"{int(bad.sum())} of {bad.size} elements outside)"
        )
    return None


def _compare_state(optimizer, state, ref_state, g, u_abs, rtol, atol, running, i, stats, momentum):
    for key in STATE_KEYS[optimizer]:
        if key == "momentum_buffer" and key not in state and momentum == 0:
            continue  # with momentum 0 the buffer never enters a later step: it may be absent
        if key not in state:
            return f"state has no {key!r} (has {sorted(state)})"
        if key == "step":
            if int(state["step"]) != ref_state["step"]:
                return f"state step is {int(state['step'])}, reference {ref_state['step']}"
            continue
        extra = np.maximum(np.abs(g), u_abs) if key == "momentum_buffer" else g
        msg = _compare(key, state[key], ref_state[key], extra, rtol, atol, running, i, stats)
        if msg:
            return msg
    return None


# ---------------------------------------------------------------------------------------------
# Reproduction


def repro(backend: str, case: Case) -> str:
    """The command that replays ``case`` alone, step by step, with its errors."""
    return f'  reproduce: python -m {__package__}.repro --backend={backend} "{case!r}"'
