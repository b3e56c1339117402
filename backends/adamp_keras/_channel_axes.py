"""``channel_axes(model)``: the output-channel axis of every trainable variable of a model (D3)."""

from __future__ import annotations

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
