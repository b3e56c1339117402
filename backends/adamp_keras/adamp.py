"""AdamP (A1-A8) as a Keras 3 optimizer, in ``keras.ops``; on the TensorFlow backend outside
XLA, (A2)-(A5) and the final update run in TensorFlow's fused training kernels instead, and
the projection in a small XLA-compiled function."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from adamp_keras._projection import ChannelAxis, ProjectedOptimizer, bias_correction

KERAS_NAMES = {"lr": "learning_rate", "betas[0]": "beta_1", "betas[1]": "beta_2", "eps": "epsilon"}


def _given(g, z):
    """The direction of ``AdamP._fused_update``'s projection: ``z`` as it is."""
    return z


@keras.saving.register_keras_serializable(package="adamp_keras")
class AdamP(ProjectedOptimizer):
    r"""AdamP: Adam whose update loses its radial part on scale-invariant weights.

    The update is Adam's ``m / (sqrt(v) / sqrt(1 - b2^t) + eps)`` (A2-A5). For a kernel
    (``ndim >= 2``) whose gradient is nearly orthogonal to it, row by row along
    ``channel_axis`` or as a whole, the radial component of that update is removed and the
    weight decay shrinks by ``wd_ratio`` (A6, A7). See ``adamp_core`` for the equations and the
    decisions D1-D10 that this class follows.

    Args:
      learning_rate: a float, a ``keras.optimizers.schedules.LearningRateSchedule`` or a
        callable without arguments.
      beta_1, beta_2: decay rates of the moments, in ``[0, 1)``.
      epsilon: added after bias correction (D5). The paper's 1e-8, not Keras' 1e-7.
      weight_decay: decoupled multiplicative decay, ``p <- p (1 - lr wd r)`` (A7, D7); it is
        AdamP's own, not the base class's, and honours ``exclude_from_weight_decay``.
      delta: threshold constant of the detection (P3); 0 never projects.
      wd_ratio: the factor r applied to the decay on projected steps (P5).
      nesterov: use ``b1 m + (1 - b1) g`` as the numerator (A5).
      channel_axis: output-channel axis of the kernels (D3). None: the axis of the layer that
        owns each kernel, where the optimizer is built for a model's variables (the table of
        ``channel_axes``: -2 for transposed convolutions, 0 for embeddings), -1 (Keras'
        ``(..., in, out)`` layout) for every other variable. An int for every variable, a
        mapping from variable path to axis as returned by ``channel_axes(model)``, or a
        callable on the variable.
      track_projection: count, per variable, the steps in which each view fired; read them
        with ``projection_counts()``.
      name: the optimizer's name; None gives Keras' unique name from the class name
        (``adam_p``, ``adam_p_1``, ...; ``sgdp``, ``sgdp_1``), so the state variables of two
        optimizers never share a path.
      **kwargs: the base-class options (``clipnorm``, ``clipvalue``, ``global_clipnorm``,
        ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency``, ``loss_scale_factor``,
        ``gradient_accumulation_steps``).

    Examples:
      >>> import keras
      >>> from adamp_keras import AdamP, channel_axes
      >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
      >>> model.compile(optimizer=AdamP(1e-3, channel_axis=channel_axes(model)), loss="mse")

    References:
      Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
      Weights", ICLR 2021, Algorithm 2.
    """

    # TensorFlow backend: (A2)-(A5) in TensorFlow's fused Adam kernel (see _fused_update).
    # False takes the keras.ops path on every backend (tests compare the two).
    use_fused_kernel = True

    def __init__(
        self,
        learning_rate=1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float = 0.0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
        channel_axis: ChannelAxis = None,
        track_projection: bool = False,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            names=KERAS_NAMES,
            hyperparameters=dict(
                betas=(beta_1, beta_2),
                eps=epsilon,
                delta=delta,
                wd_ratio=wd_ratio,
                nesterov=nesterov,
            ),
            weight_decay=weight_decay,
            channel_axis=channel_axis,
            track_projection=track_projection,
            name=name,
            **kwargs,
        )
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.delta, self.wd_ratio, self.nesterov = float(delta), float(wd_ratio), bool(nesterov)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._exp_avg = [self._state_variable(v, "exp_avg") for v in variables]
        self._exp_avg_sq = [self._state_variable(v, "exp_avg_sq") for v in variables]
        # TensorFlow's kernel forms the moments as m + (g - m)(1 - b): within a few ulps of the
        # reference's m b + (1 - b) g for b >= 0.5, but for small b, v + (g^2 - v) cancels (the
        # conformance suite found b2 = 0 off by 1e-9 relative in float64); those take keras.ops.
        self._tf_fused = (
            self.use_fused_kernel
            and keras.backend.backend() == "tensorflow"
            and min(self.beta_1, self.beta_2) >= 0.5
        )
        self._scratch_vars = None
        if self._tf_fused:
            from adamp_keras import _tf

            self._scratch_vars = _tf.Scratch(variables, self._exp_avg)

    def update_step(self, gradient, variable, learning_rate):
        begun = self._begin(gradient, variable, learning_rate)
        if begun is None:
            return
        i, lr, p, g = begun
        b1, b2, eps, dt = self.beta_1, self.beta_2, self.epsilon, p.dtype
        m_var, v_var = self._exp_avg[i], self._exp_avg_sq[i]

        t = self.iterations + 1  # A1: Keras counts steps per optimizer, not per variable
        if self._tf_fused:
            from adamp_keras import _tf

            if not _tf.in_xla():
                self._fused_update(i, variable, lr, p, g, t)
                return
        m = m_var * b1 + (1 - b1) * g  # A2
        g2 = g * g
        v = v_var * b2 + (1 - b2) * g2  # A3
        den = ops.sqrt(v) / ops.sqrt(bias_correction(b2, t, dt)) + eps  # A4, D5
        u = (b1 * m + (1 - b1) * g) / den if self.nesterov else m / den  # A5, D5: updated m
        c, r = self._project(i, p, g, u, g2=g2, apply=False)  # A6, D4: projected u is u - p c
        a = lr / bias_correction(b1, t, dt)
        # A7 (D7: from the parameter before the step) and A8 with the projection folded in:
        # p (1 - lr wd r) - a (u - p c) = p (1 - lr wd r + a c) - a u, one pass over p
        decay = 1 - lr * self.weight_decay * r if self._decays(i) else 1.0
        p = p * (decay + a * c) - a * u
        self.assign(m_var, m)
        self.assign(v_var, v)
        self.assign(variable, ops.cast(p, variable.dtype))

    def _fused_update(self, i, variable, lr, p, g, t):
        """(A2)-(A8) on the TensorFlow backend outside XLA, in two fused TensorFlow kernels.

        ``tf.raw_ops.ResourceApplyAdam`` (the kernel of TensorFlow's own Adam), applied with
        ``lr = 1``, both powers 0 and ``epsilon = eps sqrt(1 - b2^t)`` to a zeroed scratch
        variable ``z``, updates m and v (A2, A3) and leaves ``z = -u / sqrt(1 - b2^t)``, with
        the reference's denominator ``sqrt(v) / sqrt(1 - b2^t) + eps`` (A4, A5, D5): one pass
        over g, m, v and z in place of a kernel per operation. The projection is taken on
        ``z`` (``u = k z``, ``k = -sqrt(1 - b2^t)``) by one XLA-compiled function (``_project``
        with ``direction``), and the update is ``p <- p (1 - lr wd r + a c)`` followed by
        ``ResourceApplyGradientDescent`` of ``a z``.
        """
        import tensorflow as tf

        from adamp_keras._tf import handle, same_dtype

        dt = p.dtype
        z = self._scratch_vars.get(tuple(variable.shape), dt)
        k = -ops.sqrt(bias_correction(self.beta_2, t, dt))
        tf.raw_ops.AssignVariableOp(resource=z.handle, value=tf.zeros(variable.shape, dt))
        zero = ops.zeros((), dt)
        tf.raw_ops.ResourceApplyAdam(
            var=z.handle,
            m=handle(self._exp_avg[i]),
            v=handle(self._exp_avg_sq[i]),
            beta1_power=zero,
            beta2_power=zero,
            lr=ops.ones((), dt),
            beta1=ops.convert_to_tensor(self.beta_1, dt),
            beta2=ops.convert_to_tensor(self.beta_2, dt),
            epsilon=-k * self.epsilon,
            grad=g,
            use_nesterov=self.nesterov,
        )
        z = tf.raw_ops.ReadVariableOp(resource=z.handle, dtype=dt)
        # The projected u is k (z - p c); the sums run in one XLA-compiled function.
        c, r = self._project(i, p, g, z, apply=False, direction=_given)
        a = lr / bias_correction(self.beta_1, t, dt) * k  # A8's step size for z
        decay = 1 - lr * self.weight_decay * r if self._decays(i) else 1.0  # A7, D7
        if not same_dtype(variable.dtype, dt):
            self.assign(variable, ops.cast(p * (decay + a * c) - a * z, variable.dtype))  # D9
            return
        self.assign(variable, p * (decay + a * c))
        tf.raw_ops.ResourceApplyGradientDescent(var=handle(variable), alpha=a, delta=z)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "delta": self.delta,
                "wd_ratio": self.wd_ratio,
                "nesterov": self.nesterov,
            }
        )
        return config
