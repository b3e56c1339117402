"""State dicts in the format of the official ``adamp`` package and timm, for loading there.

Loading the other way needs nothing: ``AdamP.load_state_dict`` / ``SGDP.load_state_dict`` take
the official package's and timm's state dicts as they are.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor

# Param-group keys that only adamp_torch has; the official optimizers do not read them.
OWN_GROUP_KEYS = ("channel_axis", "project_buffer", "impl")


def to_official_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A copy of an ``AdamP`` or ``SGDP`` state dict in the official package's format.

    adamp_torch keeps AdamP's ``step`` as a float32 tensor, as ``torch.optim`` does (the step
    compiles and never reads a counter on the host). The official ``adamp.AdamP`` (and timm's)
    counts with a Python int and raises ``beta ** step`` directly, so from a float32 tensor it
    would compute its bias corrections in float32 (float64 parameters were 4e-7 off after 7
    steps in one measurement). Here each ``step`` becomes the int the official code would
    hold, and the group keys that only adamp_torch has (``channel_axis``, ``project_buffer``,
    ``impl``) are left out; everything else (moments, buffers, other group keys such as a
    scheduler's ``initial_lr``) is copied unchanged. The official optimizer that loads the
    result continues exactly as if it had taken the earlier steps itself.

    The official SGDP always stores the projected buffer (``project_buffer=True`` here, D6):
    from an SGDP checkpoint saved with the default ``project_buffer=False`` it continues with
    that behaviour, not this one's.

    Args:
      state_dict: the result of ``AdamP.state_dict()`` or ``SGDP.state_dict()``; not modified.

    Returns:
      A new state dict for ``adamp.AdamP`` / ``adamp.SGDP`` (or timm's) ``load_state_dict``.

    Raises:
      ValueError: for a param group with a ``channel_axis`` other than 0 (the official code
        always takes rows on axis 0, so it would step such parameters differently), or a
        ``step`` that is not a whole number.

    Examples:
      >>> import adamp, torch
      >>> from adamp_torch import AdamP, to_official_state_dict
      >>> w = torch.nn.Parameter(torch.ones(2, 3))
      >>> opt = AdamP([w], lr=1e-3)
      >>> w.grad = torch.ones(2, 3)
      >>> opt.step()
      >>> official = adamp.AdamP([w], lr=1e-3)
      >>> official.load_state_dict(to_official_state_dict(opt.state_dict()))
      >>> official.state[w]["step"]
      1
    """
    out = {k: v for k, v in state_dict.items() if k not in ("state", "param_groups")}
    groups = []
    for i, group in enumerate(state_dict["param_groups"]):
        axis = group.get("channel_axis", 0)
        if axis != 0:
            raise ValueError(
                f"param group {i} has channel_axis={axis!r}; the official package takes the rows "
                "of axis 0 only, so only groups with channel_axis=0 can be converted"
            )
        groups.append({k: copy.deepcopy(v) for k, v in group.items() if k not in OWN_GROUP_KEYS})
    states = {}
    for key, st in state_dict["state"].items():
        st = {k: v.clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in st.items()}
        if "step" in st:
            st["step"] = _whole(st["step"], key)
        states[key] = st
    out["state"], out["param_groups"] = states, groups
    return out


def _whole(step: Any, key: Any) -> int:
    value = float(step.item() if isinstance(step, Tensor) else step)
    if not value.is_integer() or value < 0:
        raise ValueError(f"state {key!r}: step must be a whole number >= 0 (got {value!r})")
    return int(value)
