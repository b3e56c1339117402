"""The one hyperparameter validator, shared by the reference and every adapter.

Each rule names the argument and its allowed range, so a user sees e.g.
``ValueError: betas[1] must be in [0, 1) (got 1.0)``. Adapters pass their own spelling through
``names`` (Keras ``epsilon``, optax ``b1``) so the message names what the user typed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

# Defaults of the official package (PyPI ``adamp`` 0.3.0); SGDP has no default lr.
ADAMP_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "delta": 0.1,
    "wd_ratio": 0.1,
    "nesterov": False,
}
SGDP_DEFAULTS: dict[str, Any] = {
    "momentum": 0.0,
    "dampening": 0.0,
    "weight_decay": 0.0,
    "nesterov": False,
    "eps": 1e-8,
    "delta": 0.1,
    "wd_ratio": 0.1,
    "project_buffer": False,
}

# name -> (lower, lower_inclusive, upper, upper_inclusive); None means unbounded.
_RANGES: dict[str, tuple[float, bool, float | None, bool]] = {
    "lr": (0.0, True, None, False),
    "eps": (0.0, False, None, False),
    "beta": (0.0, True, 1.0, False),
    "momentum": (0.0, True, 1.0, False),
    "dampening": (0.0, True, 1.0, True),
    "weight_decay": (0.0, True, None, False),
    "delta": (0.0, True, None, False),
    "wd_ratio": (0.0, True, 1.0, True),
}
_FLAGS = ("nesterov", "project_buffer")


def _range_text(lo: float, lo_inc: bool, hi: float | None, hi_inc: bool) -> str:
    if hi is None:
        return f"{'>=' if lo_inc else '>'} {lo:g}"
    return f"in {'[' if lo_inc else '('}{lo:g}, {hi:g}{']' if hi_inc else ')'}"


def _check_number(label: str, value: Any, rule: tuple[float, bool, float | None, bool]) -> float:
    lo, lo_inc, hi, hi_inc = rule
    allowed = _range_text(*rule)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:  # 0-d arrays and tensors of any framework
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{label} must be a real number {allowed} (got {value!r})") from None
    x = float(value)
    ok = math.isfinite(x) and (x >= lo if lo_inc else x > lo)
    if ok and hi is not None:
        ok = x <= hi if hi_inc else x < hi
    if not ok:
        raise ValueError(f"{label} must be {allowed} (got {value!r})")
    return x


def validate_hyperparameters(names: Mapping[str, str] | None = None, **hp: Any) -> None:
    """Validates the hyperparameters given; absent ones are not checked.

    Args:
      names: optional map from the reference's names (``lr``, ``betas``, ``eps``, ...) to the
        caller's spelling, used in error messages (``{"eps": "epsilon"}`` for Keras). A pair
        ``betas`` may be renamed as a whole (``"betas"``) or per item (``"betas[0]"``).
      **hp: any of ``lr``, ``betas``, ``eps``, ``weight_decay``, ``delta``, ``wd_ratio``,
        ``nesterov``, ``momentum``, ``dampening``, ``project_buffer``. Pass a learning rate that
        is a schedule (callable) as ``lr=None`` or leave it out.

    Raises:
      ValueError: naming the argument and its allowed range, for a value outside it; for
        nesterov with ``momentum == 0`` or ``dampening != 0`` (the ``torch.optim.SGD`` rule).
      TypeError: for an unknown hyperparameter name.
    """
    names = dict(names or {})

    def label(key: str) -> str:
        return names.get(key, key)

    for key, value in hp.items():
        if value is None and key == "lr":
            continue
        if key == "betas":
            try:
                b1, b2 = value
            except (TypeError, ValueError):
                raise ValueError(
                    f"{label('betas')} must be a pair (beta1, beta2), each in [0, 1) "
                    f"(got {value!r})"
                ) from None
            base = label("betas")
            for i, b in enumerate((b1, b2)):
                _check_number(names.get(f"betas[{i}]", f"{base}[{i}]"), b, _RANGES["beta"])
        elif key in _RANGES and key != "beta":
            _check_number(label(key), value, _RANGES[key])
        elif key in _FLAGS:
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise ValueError(f"{label(key)} must be True or False (got {value!r})")
        else:
            raise TypeError(f"unknown hyperparameter {key!r}")

    if hp.get("nesterov") and "momentum" in hp:
        if float(hp["momentum"]) <= 0.0 or float(hp.get("dampening", 0.0)) != 0.0:
            raise ValueError(
                f"{label('nesterov')}=True requires {label('momentum')} > 0 and "
                f"{label('dampening')} == 0 (got {label('momentum')}={hp['momentum']!r}, "
                f"{label('dampening')}={hp.get('dampening', 0.0)!r})"
            )


def check_channel_axis(channel_axis: Any, shape: tuple[int, ...]) -> int | None:
    """Returns ``channel_axis`` normalised to ``[0, ndim)``, or None for an ineligible shape.

    Parameters with ``ndim <= 1`` are never projected (D4), so any axis is accepted for them.

    Raises:
      ValueError: for a non-integer axis, or one outside ``[-ndim, ndim)`` of an eligible shape.
    """
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, numbers.Integral):
        raise ValueError(f"channel_axis must be an integer (got {channel_axis!r})")
    ndim = len(shape)
    if ndim < 2:
        return None
    if not -ndim <= channel_axis < ndim:
        raise ValueError(
            f"channel_axis must be in [{-ndim}, {ndim}) for a parameter of shape "
            f"{tuple(shape)} (got {channel_axis})"
        )
    return int(channel_axis) % ndim


def check_grad_shape(param_shape: tuple[int, ...], grad_shape: tuple[int, ...]) -> None:
    """Raises ValueError when the gradient's shape differs from the parameter's."""
    if tuple(param_shape) != tuple(grad_shape):
        raise ValueError(
            f"grad shape {tuple(grad_shape)} does not match param shape {tuple(param_shape)}"
        )
