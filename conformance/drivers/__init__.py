"""Drivers: the only framework-aware code of the suite.

A driver runs one implementation on NumPy inputs and hands back NumPy outputs. The suite needs
nothing else from a framework. To test an implementation we have never seen, write a class with
the attributes and methods of ``Driver`` and pass ``--backend=module:attribute``
(``docs/conformance.md``).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ProblemGroup:
    """A param group: hyperparameters (reference spelling), channel axis, parameter indices."""

    hyperparams: dict[str, Any]
    channel_axis: int
    indices: tuple[int, ...]


@dataclass
class SparseRows:
    """A gradient given as rows: ``dense[indices[j]] += values[j]`` along axis 0.

    Indices repeat (their values are summed, as ``tf.IndexedSlices`` and ``BCOO`` do); rows that
    no index names have a zero gradient. ``values`` has the gradient's dtype and the shape
    ``(len(indices), *shape[1:])``; the sum equals ``Problem.grads[k][i]`` exactly (a repeated
    row is split into halves).
    """

    indices: np.ndarray
    values: np.ndarray
    shape: tuple[int, ...]


@dataclass
class Problem:
    """What a driver runs.

    Attributes:
      optimizer: ``"adamp"`` or ``"sgdp"``.
      dtype: name of the parameters' dtype (``float64``, ``float32``, ``float16``, ``bfloat16``).
      params: initial values, NumPy arrays of that dtype (bfloat16: ``ml_dtypes.bfloat16``).
        The driver must not write them.
      grads: ``grads[k][i]``: gradient of parameter i at step k, same dtype and shape.
      groups: param groups; every parameter is in exactly one.
      layouts: per parameter, ``"contiguous"`` or ``"strided"`` (see ``Driver.strided``).
      sparse: empty, or ``sparse[k][i]``: the same gradient as ``SparseRows`` (None where it is
        dense). A driver whose ``sparse_gradients`` is ``"rows"`` feeds it in its framework's
        sparse form; any other driver uses ``grads``.
    """

    optimizer: str
    dtype: str
    params: list[np.ndarray]
    grads: list[list[np.ndarray]]
    groups: list[ProblemGroup]
    layouts: list[str] = field(default_factory=list)
    sparse: list[list[SparseRows | None]] = field(default_factory=list)


@dataclass
class Output:
    """One parameter after one step, normalised.

    Attributes:
      param: its value (NumPy, any float dtype).
      state: AdamP ``{"step": int, "exp_avg": array, "exp_avg_sq": array}``;
        SGDP ``{"momentum_buffer": array}``.
      grad: the gradient as the framework holds it after the step (a copy), or None where the
        framework keeps no gradient object (the suite then checks the NumPy input only).
      dtype: the dtype name of the parameter as the framework holds it after the step
        (``"bfloat16"``, ...), or None if not reported (``test_dtype_contract`` then skips).
      update_dtype: for a framework that returns updates instead of writing the parameter
        (optax), the dtype name of the update; None otherwise.
    """

    param: np.ndarray
    state: dict[str, Any]
    grad: np.ndarray | None = None
    dtype: str | None = None
    update_dtype: str | None = None


class Driver:
    """The interface. Subclass it or provide the same attributes and methods.

    Attributes:
      name: printed in the header and the report.
      version: the implementation's version string.
      default_channel_axis: the output-channel axis of the framework's weight layout (D3).
      channel_axes: the channel axes it accepts, or None for any valid axis.
      strided: whether it holds non-contiguous parameters (``Problem.layouts``).
      names: reference argument name -> the implementation's spelling (error messages), e.g.
        ``{"eps": "epsilon", "beta1": "beta_1"}``.
      ci_max_examples: optional cap on examples per test under the ci profile, for frameworks
        whose every new shape costs a compilation.
      sparse_gradients: None if the framework has no sparse gradient type its layers produce;
        ``"rows"`` if the implementation takes one (``run`` feeds ``Problem.sparse`` in it);
        ``"rejected"`` if the framework has one and the implementation refuses it
        (``run_rejected`` gets such a gradient).
      complex_dtypes: the complex dtypes ``run_rejected`` can build parameters of (the
        implementation must refuse them or step them as AdamP on (re, im) pairs).
      negative_lr: True where the implementation follows a framework whose optimizers take a
        negative learning rate as a step up the gradient (optax); then only NaN and inf
        learning rates must be refused.
    """

    name = "driver"
    version = "?"
    default_channel_axis = 0
    channel_axes: tuple[int, ...] | None = None
    strided = False
    names: dict[str, str] = {}  # noqa: RUF012 (read-only by convention)
    ci_max_examples: int | None = None
    sparse_gradients: str | None = None
    complex_dtypes: tuple[str, ...] = ()
    negative_lr = False
    device = "cpu"

    def setup(self, device: str) -> None:
        """Prepares ``device`` (``"cpu"`` or ``"gpu"``); raises RuntimeError if unavailable."""
        if device != "cpu":
            raise RuntimeError(f"{self.name} runs on cpu only (asked for {device!r})")
        self.device = device

    def dtypes(self) -> tuple[str, ...]:
        """The parameter dtypes supported on the device chosen in ``setup``."""
        return ("float64", "float32")

    def run(self, problem: Problem) -> list[list[Output]]:
        """Runs every step of ``problem``; returns ``outputs[k][i]`` after step k."""
        raise NotImplementedError

    def construct(self, optimizer: str, hyperparams: dict[str, Any]) -> None:
        """Builds the optimizer with ``hyperparams`` and runs one step on a small parameter.

        Must raise ValueError naming the argument for an invalid value.
        """
        raise NotImplementedError

    def run_rejected(self, problem: Problem) -> tuple[BaseException | None, list[Output]]:
        """Runs the first step of ``problem``, whose input the implementation may refuse (complex
        parameters; with ``sparse_gradients == "rejected"``, the gradients of
        ``problem.sparse`` in the framework's sparse form).

        Returns ``(error, outputs)``: what the implementation raised (None if it took the step)
        and, either way, ``outputs[i]``: the parameter (complex values stay complex) and its
        state as they are after the attempt (``{}`` where no state exists).
        """
        raise NotImplementedError


# name -> "module:attribute" of the driver class. Keras drivers need KERAS_BACKEND set before
# keras is imported, so each keras backend runs in its own pytest process. The module names
# follow this package's own name: ``conformance`` in a checkout, ``adamp_conformance`` installed.
_HERE = __name__
BACKENDS: dict[str, str] = {
    "numpy": _HERE + ".numpy_driver:NumpyDriver",
    "official": _HERE + ".official_driver:OfficialDriver",
    "pytorch-optimizer": _HERE + ".pytorch_optimizer_driver:PytorchOptimizerDriver",
    "torch": _HERE + ".torch_driver:TorchDriver",
    "torch-ops": _HERE + ".torch_driver:TorchOpsDriver",
    "jax": _HERE + ".jax_driver:JaxDriver",
    "keras-tensorflow": _HERE + ".keras_driver:KerasTensorflowDriver",
    "keras-jax": _HERE + ".keras_driver:KerasJaxDriver",
    "keras-torch": _HERE + ".keras_driver:KerasTorchDriver",
}


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype of ``name``; bfloat16 comes from ``ml_dtypes`` (installed with JAX)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def float_dtypes(device: str) -> tuple[str, ...]:
    """The dtypes a framework driver runs: all four on cpu; on gpu the gpu profile's float32 and
    bfloat16, with float64 as a check."""
    if device == "gpu":
        return ("float64", "float32", "bfloat16")
    return ("float64", "float32", "float16", "bfloat16")


def has_bfloat16() -> bool:
    """Whether NumPy arrays of bfloat16 can be made here (``ml_dtypes`` importable)."""
    return importlib.util.find_spec("ml_dtypes") is not None


class BackendError(Exception):
    """An unknown backend, one that does not import, or a device it does not have."""


def load(name: str | None) -> Driver:
    """Returns a driver instance for ``name`` (a key of BACKENDS or ``module:attribute``)."""
    choices = ", ".join(BACKENDS) + ", or module:attribute"
    if not name:
        raise BackendError(f"--backend is required; choose one of: {choices}")
    target = BACKENDS.get(name, name if ":" in name else None)
    if target is None:
        raise BackendError(f"unknown backend {name!r}; choose one of: {choices}")
    module_name, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
        return obj() if isinstance(obj, type) else obj
    except Exception as e:  # an ImportError, or the framework failing to initialise
        raise BackendError(f"backend {name!r} ({target}) does not load: {e!r}") from e
