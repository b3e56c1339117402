"""SGDP (S1-S6) as a Keras 3 optimizer, in ``keras.ops``; on the TensorFlow backend outside
XLA, (S1), (S2) and the final update run in TensorFlow's fused momentum kernel instead."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from adamp_keras._projection import ChannelAxis, ProjectedOptimizer

KERAS_NAMES = {"lr": "learning_rate", "eps": "epsilon"}


@keras.saving.register_keras_serializable(package="adamp_keras")
class SGDP(ProjectedOptimizer):
    r"""SGDP: SGD with momentum whose update loses its radial part on scale-invariant weights.

    The direction is the momentum buffer ``b = mu b + (1 - dampening) g`` (or ``g + mu b`` with
    nesterov), projected as in AdamP (S3); the decay is divided by ``1 - momentum`` as in the
    official code (S4, D7). See ``adamp_core`` for the equations and decisions D1-D10.

    Args:
      learning_rate: a float, a ``keras.optimizers.schedules.LearningRateSchedule`` or a
        callable without arguments.
      momentum: in ``[0, 1)``; the buffer starts at zero (official), so the first step is
        ``(1 - dampening) g``. With 0 no buffer is stored.
      dampening: in ``[0, 1]``.
      weight_decay: ``p <- p (1 - lr wd r / (1 - momentum))`` (S4); SGDP's own, not the base
        class's, and honours ``exclude_from_weight_decay``.
      nesterov: ``u = g + mu b``; needs ``momentum > 0`` and ``dampening == 0``.
      epsilon, delta, wd_ratio: of the projection (P2)-(P5).
      project_buffer: store the projected direction as the buffer, as the official code does
        when nesterov is off (D6). False follows the paper.
      channel_axis: output-channel axis of the kernels (D3), as in ``AdamP``: None (the owning
        layer's axis where it is seen at build, else -1), an int, a mapping from variable path
        to axis as returned by ``channel_axes(model)``, or a callable on the variable.
      track_projection: count, per variable, the steps in which each view fired; read them
        with ``projection_counts()``.
      name: the optimizer's name; None gives Keras' unique name from the class name
        (``adam_p``, ``adam_p_1``, ...; ``sgdp``, ``sgdp_1``), so the state variables of two
        optimizers never share a path.
      **kwargs: the base-class options (``clipnorm``, ``clipvalue``, ``global_clipnorm``,
        ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency``, ``loss_scale_factor``,
        ``gradient_accumulation_steps``).

    References:
      Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
      Weights", ICLR 2021, Algorithm 1.
    """

    # TensorFlow backend: S1, S2, S5 in TensorFlow's fused momentum kernel (see _fused_update).
    # False takes the keras.ops path on every backend (tests compare the two).
    use_fused_kernel = True

    def __init__(
        self,
        learning_rate=0.01,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        epsilon: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        project_buffer: bool = False,
        channel_axis: ChannelAxis = None,
        track_projection: bool = False,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            names=KERAS_NAMES,
            hyperparameters=dict(
                momentum=momentum,
                dampening=dampening,
                nesterov=nesterov,
                eps=epsilon,
                delta=delta,
                wd_ratio=wd_ratio,
                project_buffer=project_buffer,
            ),
            weight_decay=weight_decay,
            channel_axis=channel_axis,
            track_projection=track_projection,
            name=name,
            **kwargs,
        )
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.nesterov, self.project_buffer = bool(nesterov), bool(project_buffer)
        self.epsilon, self.delta, self.wd_ratio = float(epsilon), float(delta), float(wd_ratio)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        if self.momentum != 0:
            self._momentum_buffer = [self._state_variable(v, "momentum_buffer") for v in variables]
        # The fused kernel stores the momentum buffer; a stored projected direction (D6) is not
        # what it stores, and without momentum there is no buffer to fuse with.
        self._tf_fused = (
            self.use_fused_kernel
            and keras.backend.backend() == "tensorflow"
            and self.momentum != 0
            and not (self.project_buffer and not self.nesterov)
        )

    def update_step(self, gradient, variable, learning_rate):
        begun = self._begin(gradient, variable, learning_rate)
        if begun is None:
            return
        i, lr, p, g = begun
        mu = self.momentum
        if self._tf_fused:
            from adamp_keras import _tf

            if not _tf.in_xla() and _tf.same_dtype(variable.dtype, p.dtype):
                self._fused_update(i, variable, lr, p, g)
                return

        b, u = self._direction(g, self._momentum_buffer[i] if mu != 0 else None)  # S1, S2
        project_buffer = self.project_buffer and not self.nesterov and mu != 0
        # S3, D4; unless the projected u is stored (S6), it is folded into the update of p
        u_or_c, r = self._project(i, p, g, u, apply=project_buffer)
        decay = 1 - lr * self.weight_decay * r / (1 - mu) if self._decays(i) else 1.0  # S4, D7
        if project_buffer:
            u = u_or_c
            p = p * decay - lr * u  # S5
        else:  # p decay - lr (u - p c) = p (decay + lr c) - lr u
            p = p * (decay + lr * u_or_c) - lr * u  # S4, S5
        if mu != 0:  # S6, D6
            stored = u if project_buffer else b
            self.assign(self._momentum_buffer[i], stored)
        self.assign(variable, ops.cast(p, variable.dtype))

    def _direction(self, g, buf):
        """(S1), (S2): the new buffer ``b`` and the direction ``u`` from the gradient and the
        stored buffer (None without momentum: ``mu b`` vanishes and nothing is stored)."""
        if buf is None:
            b = (1 - self.dampening) * g
        else:
            b = buf * self.momentum + (1 - self.dampening) * g  # S1
        return b, (g + self.momentum * b if self.nesterov else b)  # S2

    def _fused_direction(self, g, buf):
        """The direction of the projection in ``_fused_update`` (``_project``'s ``direction``)."""
        return self._direction(g, buf)[1]

    def _fused_update(self, i, variable, lr, p, g):
        """(S1)-(S6) on the TensorFlow backend outside XLA, for float32 and float64 variables
        with momentum whose stored buffer is not projected.

        The decision and ``c`` come from one XLA-compiled function of ``(p, g, b_old)``
        (``_project`` with ``direction``), which forms the new buffer and the direction
        in registers while it takes the four channel sums. Then ``p`` is scaled by
        ``1 - lr wd r / (1 - mu) + lr c`` (S4, and the projection's ``lr p c``), and
        ``tf.raw_ops.ResourceApplyMomentum`` (the kernel of ``tf.keras``' momentum SGD)
        updates the buffer and subtracts ``lr u`` in one pass over g, b and p (S1, S2, S5, S6).
        Its buffer update ``b mu + g`` is the reference's operation for dampening 0; with
        dampening, ``g`` is scaled by ``1 - dampening`` first.
        """
        import tensorflow as tf

        from adamp_keras._tf import handle

        mu, damp, dt = self.momentum, self.dampening, p.dtype
        buf = self._momentum_buffer[i]
        direction = self._fused_direction
        c, r = self._project(i, p, g, ops.cast(buf, dt), apply=False, direction=direction)
        decays = self._decays(i)
        decay = 1 - lr * self.weight_decay * r / (1 - mu) if decays else 1.0  # S4, D7
        if self._axes[i] is not None or decays:  # p (decay + lr c), then S5
            self.assign(variable, p * (decay + lr * c))
        tf.raw_ops.ResourceApplyMomentum(
            var=handle(variable),
            accum=handle(buf),
            lr=lr,
            grad=g * (1 - damp) if damp else g,  # the kernel adds its grad as is
            momentum=ops.convert_to_tensor(mu, dt),
            use_nesterov=self.nesterov,
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "dampening": self.dampening,
                "nesterov": self.nesterov,
                "epsilon": self.epsilon,
                "delta": self.delta,
                "wd_ratio": self.wd_ratio,
                "project_buffer": self.project_buffer,
            }
        )
        return config
