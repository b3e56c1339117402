"""Sparse gradients (keras 3.15.1 ``optimizers/optimizer_sparse_test.py``, in this project's
words, extended): on every backend and in every compile mode, a sparse gradient gives the same
parameters and optimizer state as the same gradient densified, with duplicate indices summed.

Sparse gradients are ``tf.IndexedSlices`` on TensorFlow (an ``Embedding``'s gradient), JAX
``BCOO`` and PyTorch sparse COO tensors (Keras' SGD and AdamW accept both). Keras' AdamW and SGD
run as controls. The dense gradient is formed here with NumPy (``np.add.at``), not by the code
under test.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import keras
import numpy as np
import pytest
from adamp_keras import SGDP, AdamP
from keras import ops

from tests.keras.helpers import BACKEND

OPTIMIZERS = {
    "AdamP": lambda: AdamP(0.1, weight_decay=0.01),
    "AdamP-nesterov": lambda: AdamP(0.1, nesterov=True),
    "SGDP": lambda: SGDP(0.1, weight_decay=0.01),
    "SGDP-momentum": lambda: SGDP(0.1, momentum=0.9, weight_decay=0.01),
    "SGDP-nesterov-buffer": lambda: SGDP(0.1, momentum=0.5, nesterov=True),
    "SGDP-project-buffer": lambda: SGDP(0.1, momentum=0.5, project_buffer=True),
    "AdamW": lambda: keras.optimizers.AdamW(0.1, weight_decay=0.01),
    "SGD": lambda: keras.optimizers.SGD(0.1),
    "SGD-momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
}
SHAPE = (5, 3, 2)
# The rows with gradient change from step to step: a row without gradient in one step still
# has moments (or a buffer) from the steps before, which must decay and move it, as with the
# dense gradient; a step that only touched the rows with gradient would differ there.
INDICES = {
    "distinct": [(0, 2, 4), (1,), (0, 2, 4), (2, 3), (0, 2, 4)],
    "duplicates": [(4, 0, 2, 2), (1, 1), (4, 0, 2, 2), (3, 2, 3), (0, 2, 4)],
}


def sparse(values: np.ndarray, indices: tuple[int, ...], shape=SHAPE):
    """The backend's sparse gradient with rows ``indices`` (a Python tuple on TensorFlow, as in
    Keras' own test) holding ``values``."""
    values = ops.convert_to_tensor(values)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.IndexedSlices(values, indices, shape)
    if BACKEND == "jax":
        from jax.experimental import sparse as jax_sparse

        return jax_sparse.BCOO((values, np.array(indices)[:, None]), shape=shape)
    import torch

    return torch.sparse_coo_tensor(torch.tensor([indices]), values, shape)


def dense(values: np.ndarray, indices: tuple[int, ...], shape=SHAPE) -> np.ndarray:
    out = np.zeros(shape, values.dtype)
    np.add.at(out, list(indices), values)  # duplicates are summed
    return out


def gradients(indices, steps=5, shape=SHAPE, seed=0):
    """``steps`` value arrays for the rows ``indices`` (one tuple), or one per tuple (a list)."""
    rng = np.random.default_rng(seed)
    if isinstance(indices, tuple):
        indices = [indices] * steps
    return [rng.standard_normal((len(i), *shape[1:])).astype("float32") for i in indices]


def state(opt) -> list[np.ndarray]:
    return [np.asarray(ops.convert_to_numpy(v)) for v in opt.variables]


def assert_same(sparse_opt, dense_opt, sparse_var, dense_var):
    np.testing.assert_allclose(
        ops.convert_to_numpy(sparse_var), ops.convert_to_numpy(dense_var), rtol=1e-6, atol=1e-7
    )
    for (path, a), b in zip(
        [(v.path, v) for v in sparse_opt.variables], state(dense_opt), strict=True
    ):
        np.testing.assert_allclose(ops.convert_to_numpy(a), b, rtol=1e-6, atol=1e-7, err_msg=path)


def initial(shape=SHAPE, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


# Keras' own AdamW on TensorFlow squares the slices before summing duplicates (its sparse
# path), so its v differs from the densified gradient's where an index repeats.
KERAS_DUPLICATES = pytest.mark.xfail(
    BACKEND == "tensorflow", reason="Keras' AdamW: slices squared before duplicates are summed"
)
# Keras' AdamW on JAX sums a BCOO's duplicates with bcoo_sum_duplicates, which needs a static
# size under jit.
KERAS_DUPLICATES_JIT = pytest.mark.xfail(
    BACKEND in ("tensorflow", "jax"), reason="Keras' AdamW: duplicate indices under compilation"
)


@pytest.mark.parametrize("indices", sorted(INDICES))
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_sparse_equals_dense(request, name, indices):
    if name == "AdamW" and indices == "duplicates":
        request.applymarker(KERAS_DUPLICATES)
    opts = OPTIMIZERS[name](), OPTIMIZERS[name]()
    variables = keras.Variable(initial()), keras.Variable(initial())
    for idx, values in zip(INDICES[indices], gradients(INDICES[indices]), strict=True):
        opts[0].apply([sparse(values, idx)], [variables[0]])
        opts[1].apply([ops.convert_to_tensor(dense(values, idx))], [variables[1]])
        assert_same(*opts, *variables)


MODES = {
    "tensorflow": ["tf.function", "jit_compile"],
    "jax": ["jit"],
    "torch": [],
}


@pytest.mark.skipif(not MODES[BACKEND], reason="the torch backend has no compiled apply here")
@pytest.mark.parametrize("mode", MODES[BACKEND] or ["none"])
@pytest.mark.parametrize("name", ["AdamP", "SGDP-momentum", "SGDP-project-buffer", "AdamW"])
def test_sparse_equals_dense_compiled(request, name, mode):
    if name == "AdamW":
        request.applymarker(KERAS_DUPLICATES_JIT)
    idx = INDICES["duplicates"][0]
    opts = OPTIMIZERS[name](), OPTIMIZERS[name]()
    variables = keras.Variable(initial()), keras.Variable(initial())
    for opt, v in zip(opts, variables, strict=True):
        opt.build([v])
    if BACKEND == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=mode == "jit_compile")
        def sparse_step(values, indices):
            opts[0].apply([tf.IndexedSlices(values, indices, tf.constant(SHAPE))], [variables[0]])

        @tf.function(jit_compile=mode == "jit_compile")
        def dense_step(g):
            opts[1].apply([g], [variables[1]])

        for values in gradients(idx):
            sparse_step(tf.constant(values), tf.constant(idx))
            dense_step(tf.constant(dense(values, idx)))
            assert_same(*opts, *variables)
    else:
        import jax

        def stateless(opt, v):
            @jax.jit
            def step(opt_values, grad, var_value):
                return opt.stateless_apply(opt_values, [grad], [var_value])

            def apply(grad):
                (new,), new_state = step([s.value for s in opt.variables], grad, v.value)
                v.assign(new)
                for ref, value in zip(opt.variables, new_state, strict=True):
                    ref.assign(value)

            return apply

        sparse_step, dense_step = (stateless(o, v) for o, v in zip(opts, variables, strict=True))
        for values in gradients(idx):
            sparse_step(sparse(values, idx))
            dense_step(ops.convert_to_tensor(dense(values, idx)))
            assert_same(*opts, *variables)


@pytest.mark.parametrize("cls", [AdamP, SGDP])
def test_projected_sparse_step_equals_dense(cls):
    # An embedding table (rows at axis 0) whose gradient rows are orthogonal to their weight
    # rows, as a normalised embedding's are: the channel view fires (rows without gradient have
    # cosine 0 too), so the sums over rows (P2) and the projection (P4) run on the densified
    # gradient; the counters show it fired.
    shape, idx = (6, 4), (5, 1, 1, 3)
    p0 = initial(shape)
    kwargs = dict(channel_axis=0, track_projection=True)
    opts = cls(0.1, **kwargs), cls(0.1, **kwargs)
    variables = keras.Variable(p0), keras.Variable(p0)
    for values in gradients(idx, steps=3, shape=shape):
        p = ops.convert_to_numpy(variables[0])
        g = dense(values, idx, shape)
        g -= p * (np.sum(g * p, axis=1, keepdims=True) / np.sum(p * p, axis=1, keepdims=True))
        values = g[list(idx)] / np.bincount(idx, minlength=shape[0])[list(idx), None]
        opts[0].apply([sparse(values, idx, shape)], [variables[0]])
        opts[1].apply([ops.convert_to_tensor(dense(values, idx, shape))], [variables[1]])
        assert_same(*opts, *variables)
    (counts,) = opts[0].projection_counts().values()
    assert counts == (3, 0)


@pytest.mark.skipif(BACKEND == "torch", reason="Keras' sparse test covers TensorFlow and JAX")
@pytest.mark.parametrize("name", ["AdamP", "SGDP-momentum", "AdamW", "SGD-momentum"])
def test_no_direct_variable_assignment(name):
    # Keras' test_sparse_gradients: the optimizer writes tensors through its own assign methods
    # (which handle sparse values and which Keras' JAX backend intercepts), never through the
    # variable's. Both are replaced: the optimizer's by recorders, the variable's by a failure.
    variable = keras.Variable(initial())
    opt = OPTIMIZERS[name]()
    opt.build([variable])
    cls = type(variable.value) if BACKEND == "tensorflow" else type(variable)
    written = []

    def record(target, value):
        written.append(getattr(target, "path", "?"))

    def fail(target, *args, **kwargs):
        if len(target.shape):  # Keras' test exempts scalars
            raise AssertionError("the optimizer assigned to a variable directly")

    with contextlib.ExitStack() as stack:
        # Keras' base-class weight decay writes the variable itself (AdamW); Keras' test
        # patches it out too. AdamP and SGDP apply their decay inside the step.
        stack.enter_context(mock.patch.object(opt, "_apply_weight_decay", autospec=True))
        for m in ("assign", "assign_add", "assign_sub"):
            stack.enter_context(mock.patch.object(opt, m, autospec=True)).side_effect = record
            stack.enter_context(mock.patch.object(cls, m, autospec=True)).side_effect = fail
        opt.apply([sparse(gradients((0, 2, 4))[0], (0, 2, 4))], [variable])
    assert written  # the step went through the optimizer's methods
