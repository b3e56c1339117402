"""The output-channel axis of the kernels of Keras layers (D3): ``channel_axes(model)``, and the
axes the optimizers take by default from the layers that own the variables they are built for."""

from __future__ import annotations

import sys

import keras

# Layers whose kernel does not keep its output channels on the last axis.
#   Conv*Transpose kernel (*k, out, in): -2.
#   DepthwiseConv kernel (*k, in, multiplier): output channel i*multiplier + j; grouping by the
#     input channel (-2) keeps each output channel inside one row, exact for multiplier 1.
#   SeparableConv depthwise_kernel: as DepthwiseConv; its pointwise_kernel is a plain conv (-1).
#   Embedding (input_dim, output_dim): one row per token (0), as the official code does on
#     torch.nn.Embedding, whose weight has the same layout.
_SPECIAL = (
    (("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"), "kernel", -2),
    (("DepthwiseConv1D", "DepthwiseConv2D"), "kernel", -2),
    (("SeparableConv1D", "SeparableConv2D"), "depthwise_kernel", -2),
    (("Embedding",), "embeddings", 0),
)


def _layer_axes(layer) -> dict[int, int]:
    """``{id(variable): axis}`` for the variables of ``layer`` that need an axis other than -1."""
    out = {}
    for class_names, attr, axis in _SPECIAL:
        classes = tuple(getattr(keras.layers, c) for c in class_names)
        if isinstance(layer, classes) and getattr(layer, attr, None) is not None:
            out[id(getattr(layer, attr))] = axis
    return out


def _collect(root, wanted, found, seen_layers) -> None:
    """Adds the axes that ``root`` and its sublayers give the ``wanted`` variables to ``found``."""
    try:
        layers = root._flatten_layers(include_self=True, recursive=True)
    except AttributeError:  # a layer whose __init__ has not reached Layer.__init__ yet
        return
    for layer in layers:
        if id(layer) in seen_layers:
            continue
        seen_layers.add(id(layer))
        special = _layer_axes(layer)
        for v in layer._trainable_variables:
            if id(v) in wanted:
                found.setdefault(id(v), set()).add(special.get(id(v), -1))


def owner_axes(variables) -> dict[int, int]:
    """``{id(variable): axis}`` for the variables of ``ndim >= 2`` owned by a layer of the table.

    An optimizer sees only variables; their layers are found among the Keras layers and models
    that the calling frames hold (``self`` of Keras' trainer in ``fit`` and ``compile``, the
    caller's ``model`` in ``optimizer.build(model.trainable_variables)``, module globals),
    walked with their sublayers. A variable is entered only when every layer found to hold it
    gives the same axis; one that is also a plain kernel of another layer (a tied embedding used
    as a Dense kernel) is ambiguous and left to the default.
    """
    wanted = {id(v) for v in variables if len(v.shape) >= 2}
    found: dict[int, set[int]] = {}
    seen_layers: set[int] = set()
    seen_namespaces: set[int] = set()
    frame = sys._getframe(1)
    while frame is not None and wanted:
        for namespace in (frame.f_locals, frame.f_globals):
            if id(namespace) in seen_namespaces:
                continue
            seen_namespaces.add(id(namespace))
            # type(), not isinstance(): no attribute of an arbitrary object is read
            roots = [o for o in list(namespace.values()) if issubclass(type(o), keras.Layer)]
            for root in roots:
                if id(root) not in seen_layers:
                    _collect(root, wanted, found, seen_layers)
        frame = frame.f_back
    return {k: axes.pop() for k, axes in found.items() if len(axes) == 1 and -1 not in axes}


def channel_axes(model: keras.Model, default: int = -1) -> dict[str, int]:
    """Maps the path of every trainable variable with ``ndim >= 2`` to its output-channel axis.

    Keras kernels are ``(..., in, out)`` (Dense, Conv1D-3D: ``default``, -1); transposed
    convolutions keep their output channels on axis -2; depthwise kernels get -2 and embeddings 0
    (see the table in ``docs/keras.md``). Pass the result as ``channel_axis`` of AdamP or SGDP.

    Args:
      model: a built model (or layer); nested models and layers are walked.
      default: the axis of every variable not covered by a rule above.

    Returns:
      ``{path: axis}`` with variable paths relative to the model (``dense/kernel`` rather than
      ``sequential/dense/kernel``, the form a reloaded model uses); the optimizer matches a key
      against the end of each variable's path. A plain dict, saved with the optimizer's config.

    Examples:
      >>> import keras
      >>> m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2DTranspose(4, 3)])
      >>> list(channel_axes(m).values())
      [-2]
    """
    if not model.built:
        raise ValueError("channel_axes(model) needs a built model: call it after model.build()")
    special = {}
    # _flatten_layers is Keras' own recursive layer walk (also used by Layer.weights).
    for layer in model._flatten_layers(include_self=True, recursive=True):
        special.update(_layer_axes(layer))
    prefix = f"{model.name}/"
    variables = [v for v in model.trainable_variables if len(v.shape) >= 2]
    keys = [v.path.removeprefix(prefix) for v in variables]
    if len(set(keys)) < len(keys):  # two nested models with equal inner names: full paths
        keys = [v.path for v in variables]
    return {k: special.get(id(v), default) for k, v in zip(keys, variables, strict=True)}
