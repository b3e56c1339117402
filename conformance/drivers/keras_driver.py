"""This project's Keras 3 adapter, ``adamp_keras.AdamP`` / ``SGDP``, on one Keras backend.

``KERAS_BACKEND`` is read once, when keras is first imported, so each Keras backend runs in its
own pytest process: ``--backend=keras-tensorflow``, ``keras-jax`` or ``keras-torch``. A param
group becomes one optimizer instance over its variables (Keras has no param groups); all of
them are applied at every step. The state is read from the optimizer's per-variable state lists
(``_exp_avg``, ``_exp_avg_sq``, ``_momentum_buffer``, indexed like its variables), the step
from ``iterations``. For float64 problems ``keras.config.floatx()`` is float64 during the run,
as a float64 Keras user sets it (the learning rate lives in a floatx variable).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from . import Driver, Output, Problem, float_dtypes

_STATE_LISTS = {
    "exp_avg": ("_exp_avg", "exp_avg"),
    "exp_avg_sq": ("_exp_avg_sq", "exp_avg_sq"),
    "momentum_buffer": ("_momentum_buffer", "momentum_buffer"),
}


class _KerasDriver(Driver):
    keras_backend = "?"
    default_channel_axis = -1
    channel_axes = None
    complex_dtypes = ("complex64", "complex128")
    names = {  # noqa: RUF012
        "lr": "learning_rate",
        "beta1": "beta_1",
        "beta2": "beta_2",
        "eps": "epsilon",
    }

    def __init__(self) -> None:
        loaded = sys.modules.get("keras")
        if loaded is not None and loaded.backend.backend() != self.keras_backend:
            raise RuntimeError(
                f"keras is already imported with backend {loaded.backend.backend()!r}; run "
                f"--backend=keras-{self.keras_backend} in its own process"
            )
        os.environ["KERAS_BACKEND"] = self.keras_backend
        if self.keras_backend == "jax":
            import jax

            jax.config.update("jax_enable_x64", True)  # float64 variables stay float64
        import adamp_keras
        import keras

        self.version = (
            f"{getattr(adamp_keras, '__version__', '0.1.0')} (keras {keras.__version__}, "
            f"{self.keras_backend})"
        )
        self.name = f"adamp_keras on {self.keras_backend}"

    def setup(self, device: str) -> None:
        if device == "gpu":
            self._gpu_setup()
        self.device = device

    def _gpu_setup(self) -> None:
        if self.keras_backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if not gpus:
                raise RuntimeError(f"tensorflow {tf.__version__} sees no GPU")
            tf.config.experimental.enable_tensor_float_32_execution(False)
            self.device_name = gpus[0].name
        elif self.keras_backend == "jax":
            import jax

            try:
                self.device_name = jax.devices("gpu")[0].device_kind
            except RuntimeError as e:
                raise RuntimeError(f"jax {jax.__version__} sees no GPU: {e}") from e
            jax.config.update("jax_default_matmul_precision", "highest")
        else:
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError(f"torch {torch.__version__} sees no CUDA device")
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            self.device_name = torch.cuda.get_device_name(0)

    def dtypes(self) -> tuple[str, ...]:
        return float_dtypes(self.device)

    def _make(self, optimizer: str, hp: dict[str, Any], channel_axis: int):
        import adamp_keras

        hp = dict(hp)
        kw = {"learning_rate": hp.pop("lr"), "channel_axis": channel_axis}
        if optimizer == "adamp":
            b1, b2 = hp.pop("betas")
            kw.update(beta_1=b1, beta_2=b2, epsilon=hp.pop("eps"))
            return adamp_keras.AdamP(**kw, **hp)
        kw["epsilon"] = hp.pop("eps")
        return adamp_keras.SGDP(**kw, **hp)

    @staticmethod
    def _array(x) -> np.ndarray:
        import keras

        return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(x, "float64")))

    def _state(self, optimizer: str, opt, var) -> dict[str, Any]:
        i = opt._get_variable_index(var)
        out: dict[str, Any] = {}
        keys = ("exp_avg", "exp_avg_sq") if optimizer == "adamp" else ("momentum_buffer",)
        for key in keys:
            lst = next((getattr(opt, a) for a in _STATE_LISTS[key] if hasattr(opt, a)), None)
            if lst is not None:  # SGDP keeps no buffer when momentum == 0
                out[key] = self._array(lst[i])
        if optimizer == "adamp":
            out["step"] = int(self._array(opt.iterations))
        return out

    def run(self, problem: Problem) -> list[list[Output]]:
        import keras

        # Keras keeps the learning rate in a variable of dtype floatx (float32 by default); a
        # float64 user sets floatx to float64, so the driver does too for float64 problems.
        floatx = keras.config.floatx()
        keras.config.set_floatx("float64" if problem.dtype == "float64" else "float32")
        try:
            return self._run(problem)
        finally:
            keras.config.set_floatx(floatx)

    def _run(self, problem: Problem) -> list[list[Output]]:
        import keras

        variables = [
            keras.Variable(self._cast_in(p), dtype=problem.dtype, name=f"p{i}")
            for i, p in enumerate(problem.params)
        ]
        opts = [
            (self._make(problem.optimizer, g.hyperparams, g.channel_axis), g.indices)
            for g in problem.groups
        ]
        owner = {i: opt for opt, indices in opts for i in indices}
        out = []
        for k, grads in enumerate(problem.grads):
            tensors = [self._gradient(problem, k, i, g) for i, g in enumerate(grads)]
            for opt, indices in opts:
                opt.apply_gradients([(tensors[i], variables[i]) for i in indices])
            out.append(
                [
                    Output(
                        self._array(v),
                        self._state(problem.optimizer, owner[i], v),
                        self._array(tensors[i]) if self._is_dense(tensors[i]) else None,
                        dtype=keras.backend.standardize_dtype(v.dtype),
                    )
                    for i, v in enumerate(variables)
                ]
            )
        return out

    def _gradient(self, problem: Problem, k: int, i: int, g: np.ndarray):
        """The gradient as the framework's layers give it: the sparse form where it has one."""
        import keras

        s = problem.sparse[k][i] if problem.sparse else None
        if s is None or self.sparse_gradients != "rows":
            return keras.ops.cast(keras.ops.convert_to_tensor(self._cast_in(g)), problem.dtype)
        values = keras.ops.cast(keras.ops.convert_to_tensor(self._cast_in(s.values)), problem.dtype)
        indices = np.asarray(s.indices, np.int64)
        if self.keras_backend == "tensorflow":
            import tensorflow as tf

            return tf.IndexedSlices(values, tf.constant(indices), tf.constant(s.shape, tf.int64))
        import jax.experimental.sparse as jax_sparse  # BCOO, as Keras' JAX sparse layers make

        return jax_sparse.BCOO((values, indices[:, None]), shape=tuple(s.shape))

    @staticmethod
    def _is_dense(x) -> bool:
        return type(x).__name__ not in ("IndexedSlices", "BCOO")

    def run_rejected(self, problem: Problem):
        import keras

        variables = [
            keras.Variable(p, dtype=problem.dtype, name=f"p{i}")
            for i, p in enumerate(problem.params)
        ]
        opts = []
        error = None
        try:  # complex variables may be refused when the optimizer is built
            for g in problem.groups:
                opt = self._make(problem.optimizer, g.hyperparams, g.channel_axis)
                opts.append((opt, g.indices))
                grads = [
                    keras.ops.convert_to_tensor(problem.grads[0][i], dtype=problem.dtype)
                    for i in g.indices
                ]
                opt.apply_gradients([(grads[j], variables[i]) for j, i in enumerate(g.indices)])
        except Exception as e:
            error = e
        owner = {i: opt for opt, indices in opts for i in indices}
        outputs = []
        for i, v in enumerate(variables):
            state = {}
            if i in owner and owner[i].built:
                j = owner[i]._get_variable_index(v)
                for key, names in _STATE_LISTS.items():
                    lst = next((getattr(owner[i], a) for a in names if hasattr(owner[i], a)), None)
                    if lst:
                        state[key] = keras.ops.convert_to_numpy(lst[j])
            outputs.append(Output(keras.ops.convert_to_numpy(v), state))
        return error, outputs

    @staticmethod
    def _cast_in(x: np.ndarray) -> np.ndarray:
        # Every backend takes float64/float32/float16 NumPy arrays; bfloat16 goes through
        # float32 (exact: the values are bfloat16 numbers) and is cast by keras.
        return x.astype(np.float32) if x.dtype.name == "bfloat16" else x

    def construct(self, optimizer: str, hyperparams: dict[str, Any]) -> None:
        import keras

        opt = self._make(optimizer, hyperparams, -1)
        v = keras.Variable(np.ones((2, 3), np.float32))
        opt.apply_gradients([(keras.ops.ones((2, 3)), v)])


class KerasTensorflowDriver(_KerasDriver):
    keras_backend = "tensorflow"
    sparse_gradients = "rows"  # tf.IndexedSlices (Embedding)


class KerasJaxDriver(_KerasDriver):
    keras_backend = "jax"
    sparse_gradients = "rows"  # jax.experimental.sparse.BCOO
    ci_max_examples = 6  # every op compiles for every new shape: about 0.5 s per example


class KerasTorchDriver(_KerasDriver):
    keras_backend = "torch"
