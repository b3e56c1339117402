"""This project's JAX adapter: ``adamp_jax.adamp`` / ``sgdp`` (optax), updates added to params.

Param groups become ``optax.multi_transform`` over a label per parameter, as an optax user
would write them; every group gets its own ``channel_axis``. The state is found by walking
what ``init`` / ``update`` return: the ``NamedTuple`` carrying optax's ``count`` / ``mu`` /
``nu`` (AdamP) or ``trace`` (SGDP) for the parameter's key, renamed to the reference's keys.
float64 needs ``jax_enable_x64``, switched on in ``setup``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import Driver, Output, Problem, float_dtypes

_FIELDS = {"adamp": ("count", "mu", "nu"), "sgdp": ("trace",)}
_REFERENCE_NAMES = {
    "count": "step",
    "mu": "exp_avg",
    "nu": "exp_avg_sq",
    "trace": "momentum_buffer",
}


def _find_states(tree: Any, fields: tuple[str, ...], out: list) -> list:
    """Every NamedTuple inside ``tree`` that has all of ``fields``."""
    if hasattr(tree, "_fields"):
        if all(f in tree._fields for f in fields):
            out.append(tree)
            return out
        for x in tree:
            _find_states(x, fields, out)
    elif isinstance(tree, (tuple, list)):
        for x in tree:
            _find_states(x, fields, out)
    elif isinstance(tree, dict):
        for x in tree.values():
            _find_states(x, fields, out)
    return out


class JaxDriver(Driver):
    name = "adamp_jax"
    default_channel_axis = -1
    channel_axes = None
    names = {"lr": "learning_rate", "beta1": "b1", "beta2": "b2"}  # noqa: RUF012
    ci_max_examples = 6  # about 0.6 s per example on 2 cores: one XLA compilation each
    complex_dtypes = ("complex64", "complex128")
    negative_lr = True  # as optax: a negative learning_rate steps up the gradient (docs/jax.md)

    def __init__(self) -> None:
        import jax

        jax.config.update("jax_enable_x64", True)
        import adamp_jax

        self.version = getattr(adamp_jax, "__version__", "0.1.0") + f" (jax {jax.__version__})"

    def setup(self, device: str) -> None:
        import jax

        platform = "gpu" if device == "gpu" else "cpu"
        try:
            devs = jax.devices(platform)
        except RuntimeError as e:
            raise RuntimeError(f"jax {jax.__version__} sees no {platform} device: {e}") from e
        if device == "gpu":
            jax.config.update("jax_default_matmul_precision", "highest")  # no TF32
            self.device_name = devs[0].device_kind
        self.jax_device = devs[0]
        self.device = device

    def dtypes(self) -> tuple[str, ...]:
        return float_dtypes(self.device)

    def _make(self, optimizer: str, hp: dict[str, Any], channel_axis: int):
        import adamp_jax

        hp = dict(hp)
        lr = hp.pop("lr")
        if optimizer == "adamp":
            b1, b2 = hp.pop("betas")
            return adamp_jax.adamp(lr, b1, b2, channel_axis=channel_axis, **hp)
        return adamp_jax.sgdp(lr, channel_axis=channel_axis, **hp)

    def _put(self, x: np.ndarray):
        import jax
        import jax.numpy as jnp

        return jax.device_put(jnp.asarray(x), self.jax_device)

    def _build(self, problem: Problem):
        """Parameters as a dict ``{"p0": ..., ...}`` and the optax transformation over them."""
        import optax

        keys = [f"p{i}" for i in range(len(problem.params))]
        params = {k: self._put(p) for k, p in zip(keys, problem.params, strict=True)}
        labels, transforms = {}, {}
        for gi, g in enumerate(problem.groups):
            transforms[f"g{gi}"] = self._make(problem.optimizer, g.hyperparams, g.channel_axis)
            for i in g.indices:
                labels[keys[i]] = f"g{gi}"
        return keys, params, optax.multi_transform(transforms, labels)

    def run(self, problem: Problem) -> list[list[Output]]:
        import jax
        import optax

        put = self._put
        keys, params, opt = self._build(problem)
        state = opt.init(params)
        first = {k: put(x) for k, x in zip(keys, problem.grads[0], strict=True)}
        # The dtypes of what update returns, as a training step would see them.
        update_dtypes = jax.eval_shape(lambda g, s, p: opt.update(g, s, p)[0], first, state, params)

        @jax.jit  # as a training step runs it: one compilation for all steps of the case
        def step(g, state, params):
            updates, state = opt.update(g, state, params)
            return optax.apply_updates(params, updates), state

        out = []
        for grads in problem.grads:
            g = {k: put(x) for k, x in zip(keys, grads, strict=True)}
            params, state = step(g, state, params)
            found = _find_states(state, _FIELDS[problem.optimizer], [])
            out.append(
                [
                    Output(
                        np.asarray(params[k]),
                        self._state_of(problem.optimizer, found, k),
                        np.asarray(g[k]),
                        dtype=params[k].dtype.name,
                        update_dtype=update_dtypes[k].dtype.name,
                    )
                    for k in keys
                ]
            )
        return out

    def run_rejected(self, problem: Problem):
        import optax

        keys, params, opt = self._build(problem)
        g = {k: self._put(x) for k, x in zip(keys, problem.grads[0], strict=True)}
        try:
            updates, _ = opt.update(g, opt.init(params), params)
            new = optax.apply_updates(params, updates)
        except Exception as e:  # functional: nothing can have been written
            return e, [Output(np.asarray(params[k]), {}) for k in keys]
        return None, [Output(np.asarray(new[k]), {}) for k in keys]

    @staticmethod
    def _state_of(optimizer: str, found: list, key: str) -> dict[str, Any]:
        import jax

        for s in found:
            leaves = {
                f: getattr(s, f)[key] if isinstance(getattr(s, f), dict) else getattr(s, f)
                for f in _FIELDS[optimizer]
            }
            moments = [v for f, v in leaves.items() if f != "count"]
            if all(isinstance(v, jax.Array) for v in moments):
                return {
                    _REFERENCE_NAMES[f]: (int(v) if f == "count" else np.asarray(v, np.float64))
                    for f, v in leaves.items()
                }
        raise KeyError(f"no {optimizer} state found for {key}")

    def construct(self, optimizer: str, hyperparams: dict[str, Any]) -> None:
        import jax.numpy as jnp

        opt = self._make(optimizer, hyperparams, -1)
        params = {"w": jnp.ones((2, 3))}
        opt.update(params, opt.init(params), params)
