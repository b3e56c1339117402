"""The torch-ops step's machinery, shared by AdamP and SGDP: checks, grouping, buckets,
projection: the implementation ``impl="foreach"`` of the optimizers, and the step-time checks
every implementation relies on.

The projection (P1-P5 of ``adamp_core``) is computed without reading anything on the host:

* per row (channel view, rows along ``channel_axis``) four sums are taken, ``<g,p>``, ``|g|^2``,
  ``|p|^2`` and ``<p,u>``; the layer view's sums are the totals of its rows;
* both tests (P3) become boolean tensors, and the first view that fires (D3) picks a per-row
  scale ``s = <p,u> / (|p| + eps)^2`` (P4), so the projected update is ``u - p * s``, and
  ``r`` (P5) is selected with ``torch.where``.

The optimizers never materialise the projected update unless they must store it (SGDP with
``project_buffer``): ``p * (1 - lr wd r) - a (u - p s)`` is applied as ``p * F - a u`` with the
per-row factor ``F = 1 - lr wd r + a s``.

Parameters are grouped by device, dtype and DTensor layout; each ``torch._foreach_*`` call
covers a whole group. On a CPU a group is cut into buckets of whole tensors of at most
``CPU_BUCKET_NUMEL`` elements, which bounds the step's temporaries (two bucket-sized lists).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from adamp_core import check_channel_axis, check_grad_shape

# Elements per CPU bucket: bounds the temporaries (two float32 lists of 16 MiB at most). On
# ResNet-50 shapes with 2 threads, 2^20, 2^22 and one bucket per group measured within noise
# of each other; 2^16 was about 1.5x slower (more small operations per step). Cutting single
# large tensors into row ranges so that each chunk's passes stay in cache gave no measurable
# gain either, so it was not kept.
CPU_BUCKET_NUMEL = 1 << 22
VIEW_CODES = {0: None, 1: "channel", 2: "layer"}  # values of the recorded view codes


def _dtensor_type() -> type | None:
    """DTensor's class if ``torch.distributed.tensor`` is loaded (no DTensor exists otherwise)."""
    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None) if mod is not None else None


_PLAIN = (Tensor, torch.nn.Parameter)


def is_dtensor(x: Tensor) -> bool:
    if type(x) in _PLAIN:  # the common case, without the module lookup (steps of small models)
        return False
    cls = _dtensor_type()
    return cls is not None and isinstance(x, cls)


def local(x: Tensor) -> Tensor:
    """The local shard of a DTensor, the tensor itself otherwise (in-place writes go through)."""
    return x._local_tensor if is_dtensor(x) else x


# ----------------------------------------------------------------------------- checks


def check_new_param(p: Tensor, channel_axis: Any, opt_name: str, index: int) -> None:
    """Construction-time checks of one parameter (raises before the optimizer exists)."""
    if p.is_complex():
        raise ValueError(
            f"{opt_name} does not support complex parameters (parameter {index} has dtype "
            f"{p.dtype}); optimise torch.view_as_real(param) instead"
        )
    if not p.is_floating_point():
        raise ValueError(
            f"{opt_name} needs floating-point parameters (parameter {index} has dtype {p.dtype})"
        )
    check_channel_axis(channel_axis, tuple(p.shape))
    if getattr(p, "_fsdp_flattened", False) or getattr(p, "_is_flat_param", False):
        warnings.warn(
            f"{opt_name}: parameter {index} is an FSDP1 flattened 1-D parameter (shape "
            f"{tuple(p.shape)}); parameters with ndim <= 1 are never projected, so the "
            "projection is silently lost. Use FSDP2 (torch.distributed.fsdp.fully_shard), "
            "whose DTensor parameters keep their shape.",
            stacklevel=4,
        )


def check_step_param(
    p: Tensor, state: dict, state_keys: Sequence[str], channel_axis: Any, opt_name: str
) -> None:
    """Step-time checks of a param, its grad and its state, all done before anything of any
    group is written (no half-updated step): sparsity and layout, shape, dtype, device and
    DTensor-ness. A state tensor must have the param's shape, its compute dtype (D9) and
    device, as ``load_state_dict`` leaves it; one left behind by ``model.double()`` or
    ``model.to(device)`` after the state was made is an error, not converted silently."""
    # Written for speed (a small model has hundreds of params): the shared checks of
    # adamp_core run only where they will raise.
    g = p.grad
    strided = torch.strided
    if g.layout != strided or p.layout != strided:
        raise RuntimeError(
            f"{opt_name} does not support sparse gradients or parameters (layout {g.layout})"
        )
    shape, p_dtype, device = p.shape, p.dtype, p.device
    if g.shape != shape:
        check_grad_shape(tuple(shape), tuple(g.shape))
    dt = is_dtensor(p)
    if g.dtype != p_dtype or g.device != device or is_dtensor(g) != dt:
        raise ValueError(
            f"grad dtype/device ({g.dtype}, {g.device}{', DTensor' * is_dtensor(g)}) does not "
            f"match param ({p_dtype}, {device}{', DTensor' * dt})"
        )
    ndim = len(shape)
    if ndim >= 2 and not (type(channel_axis) is int and -ndim <= channel_axis < ndim):
        check_channel_axis(channel_axis, tuple(shape))
    dtype = compute_dtype(p_dtype)
    for key in state_keys:
        s = state.get(key)
        if s is None:
            continue
        if not isinstance(s, Tensor) or s.shape != shape:
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(
                f"state[{key!r}] shape {got} does not match param shape {tuple(shape)}"
            )
        if s.dtype != dtype or s.device != device or is_dtensor(s) != dt:
            raise ValueError(
                f"{opt_name}: state[{key!r}] is ({s.dtype}, {s.device}"
                f"{', DTensor' * is_dtensor(s)}) but its param ({p_dtype}, {device}"
                f"{', DTensor' * dt}) needs ({dtype}, {device}): the param was "
                "converted or moved after its state was made (model.double(), model.to(...)); "
                "reload the state with opt.load_state_dict(opt.state_dict()) to convert it"
            )
        if s.layout != strided:
            raise ValueError(f"{opt_name}: state[{key!r}] has layout {s.layout}, not strided")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """D9: float64 stays, everything else (float32, float16, bfloat16) runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- layout


@dataclass
class _Rows:
    """Where one tensor's rows sit in the bucket's global row vector."""

    start: int  # first global row of this tensor
    rows: int  # global number of rows (1 pseudo-row for an ineligible tensor)
    local_start: int  # offset of this rank's rows inside the tensor's rows
    local_rows: int  # rows whose sums this rank contributes (all rows when not sharded on them)
    bshape: tuple[int, ...]  # broadcast shape of a per-row factor against the local tensor
    axis: int | None  # channel axis, None when ineligible (D4)


@dataclass
class Layout:
    """Per-bucket constants and buffers, cached on the optimizer by shapes, axes and dtype.

    Buckets with the same key run one after the other, so they may share the buffers.
    """

    rows: list[_Rows]
    seg: Tensor  # (R,) tensor index of each global row
    table: Tensor  # (T, max rows) row indices of each tensor, padded with R (a zero column)
    eligible: Tensor  # (T,) bool
    inv_sqrt_n: Tensor  # (R + T,) 1/sqrt(row length) per row, then 1/sqrt(numel) per tensor
    shard_groups: list[Any]  # process groups to sum the statistics over (DTensor only)
    stats: Tensor  # (4, R + 1) buffer: <g,p>, |g|^2, |p|^2, <p,u> per row; last column 0
    stat_views: list[Tensor | None]  # this rank's rows of ``stats`` per tensor
    rowbuf: Tensor  # (2, R) buffer for per-row results handed to the optimizers
    row_views: list[list[Tensor]]  # per row of ``rowbuf``, per tensor, broadcastable views
    thresholds: dict[float, Tensor]  # delta -> (R + T,) delta / sqrt(n)  (P3)

    def threshold(self, delta: float) -> Tensor:
        thr = self.thresholds.get(delta)
        if thr is None:
            thr = self.thresholds[delta] = (delta * self.inv_sqrt_n).to(self.stats.dtype)
        return thr


def _shard_info(p: Tensor, axis: int) -> tuple[int, int, list[Any]]:
    """(row offset, rows held, groups) of a DTensor's local shard along the channel axis."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    mesh, placements = p.device_mesh, p.placements
    groups = []
    for dim, pl in enumerate(placements):
        if isinstance(pl, Shard) and type(pl) is Shard:
            groups.append(mesh.get_group(dim))
        elif not isinstance(pl, Replicate):
            raise ValueError(
                f"DTensor parameters must be Shard(d) or Replicate on every mesh dimension "
                f"(got {placements})"
            )
    shape, offset = compute_local_shape_and_global_offset(p.shape, mesh, placements)
    return offset[axis], shape[axis], groups


def make_layout(
    params: Sequence[Tensor], axes: Sequence[Any], device: torch.device, dtype: torch.dtype
) -> Layout:
    rows, seg, groups = [], [], None
    inv_row, inv_numel, elig = [], [], []
    start = 0
    for i, (p, ax) in enumerate(zip(params, axes, strict=True)):
        shape = tuple(p.shape)  # global shape for a DTensor
        axis = check_channel_axis(ax, shape)
        numel = math.prod(shape)
        ndim = len(shape)
        if axis is None or numel == 0:  # D4: never tested
            rows.append(_Rows(start, 1, 0, 1, (1,) * ndim, None))
            n, e = 1, False
            inv_row.append(1.0)
            inv_numel.append(1.0)
        else:
            c = shape[axis]
            off, held = 0, c
            if is_dtensor(p):
                off, held, groups = _shard_info(p, axis)
            bshape = tuple(held if d == axis else 1 for d in range(ndim))
            rows.append(_Rows(start, c, off, held, bshape, axis))
            n, e = c, True
            inv_row += [1.0 / math.sqrt(numel // c)] * c
            inv_numel.append(1.0 / math.sqrt(numel))
        elig.append(e)
        seg += [i] * n
        start += n
    # Per-tensor sums gather the rows through a padded table and add along it: deterministic
    # and free of host reads on every device (unlike atomics or segment_reduce's checks).
    width = max(r.rows for r in rows)
    table = torch.full((len(rows), width), start, dtype=torch.long)
    for i, r in enumerate(rows):
        table[i, : r.rows] = torch.arange(r.start, r.start + r.rows)
    stats = torch.zeros(4, start + 1, dtype=dtype, device=device)
    rowbuf = torch.zeros(2, start, dtype=dtype, device=device)
    stat_views, row_views = [], [[], []]
    for r in rows:
        lo = r.start + r.local_start
        stat_views.append(stats[:, lo : lo + r.local_rows] if r.axis is not None else None)
        for k in range(2):
            row_views[k].append(rowbuf[k, lo : lo + r.local_rows].view(r.bshape))
    return Layout(
        rows=rows,
        seg=torch.tensor(seg, dtype=torch.long).to(device, non_blocking=True),
        table=table.to(device, non_blocking=True),
        eligible=torch.tensor(elig, dtype=torch.bool).to(device, non_blocking=True),
        inv_sqrt_n=torch.tensor(inv_row + inv_numel, dtype=torch.float64).to(
            device, non_blocking=True
        ),
        shard_groups=groups or [],
        stats=stats,
        stat_views=stat_views,
        rowbuf=rowbuf,
        row_views=row_views,
        thresholds={},
    )


def layout_key(params: Sequence[Tensor], axes: Sequence[Any]) -> tuple:
    key = []
    for p, ax in zip(params, axes, strict=True):
        k = (tuple(p.shape), ax, p.dtype, local(p).device)
        if is_dtensor(p):
            k += (id(p.device_mesh), tuple(p.placements), tuple(local(p).shape))
        key.append(k)
    return tuple(key)


# ----------------------------------------------------------------------------- grouping


def group_key(p: Tensor) -> tuple:
    if is_dtensor(p):
        return (local(p).device, p.dtype, id(p.device_mesh), tuple(p.placements))
    return (p.device, p.dtype)


def buckets(params: Sequence[Tensor]) -> list[list[int]]:
    """Indices of ``params`` cut into buckets: same device/dtype/layout, bounded size on CPU."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(group_key(p), []).append(i)
    out = []
    for key, idx in groups.items():
        if key[0].type != "cpu":
            out.append(idx)
            continue
        cur, size = [], 0
        for i in idx:
            n = local(params[i]).numel()
            if cur and size + n > CPU_BUCKET_NUMEL:
                out.append(cur)
                cur, size = [], 0
            cur.append(i)
            size += n
        out.append(cur)
    return out


# ----------------------------------------------------------------------------- projection


def _row_sums(out: Tensor, p: Tensor, g: Tensor, u: Tensor, axis: int, scratch: Tensor) -> None:
    """Writes <g,p>, |g|, |p|, <p,u> of each row of the local tensors into ``out`` (4, rows).

    ``scratch``, a dead temporary of the same shape, receives the elementwise products, so
    no memory is allocated here.
    """
    if (
        axis == 0
        and scratch.dtype == p.dtype
        and p.is_contiguous()
        and g.is_contiguous()
        and u.is_contiguous()
        and scratch.is_contiguous()
    ):
        c = p.shape[0]
        p2, g2, u2, w = p.view(c, -1), g.view(c, -1), u.view(c, -1), scratch.view(c, -1)
        gp, gn, pn, pu = out
        torch.sum(torch.mul(g2, p2, out=w), dim=1, out=gp)
        torch.linalg.vector_norm(g2, dim=1, out=gn)
        torch.linalg.vector_norm(p2, dim=1, out=pn)
        torch.sum(torch.mul(p2, u2, out=w), dim=1, out=pu)
        return
    # channels_last, other channel axes, other strides: reduce over every dim but the axis
    dims = [d for d in range(p.ndim) if d != axis]
    out[0] = (g * p).sum(dims)
    out[1] = torch.linalg.vector_norm(g, dim=dims)
    out[2] = torch.linalg.vector_norm(p, dim=dims)
    out[3] = (p * u).sum(dims)


def row_sums(
    layout: Layout,
    ps: Sequence[Tensor],
    gs: Sequence[Tensor],
    us: Sequence[Tensor],
    scratch: Sequence[Tensor],
) -> None:
    """(P1) The channel view's sums of a bucket, into the layout's buffer."""
    if layout.shard_groups:
        layout.stats.zero_()  # rows held by other ranks must add nothing
    for i, (out, p, g, u, w) in enumerate(zip(layout.stat_views, ps, gs, us, scratch, strict=True)):
        if out is not None and p.numel():
            _row_sums(out, p, g, u, layout.rows[i].axis, w)


@dataclass
class Projected:
    """Per-row scale ``s`` (P4), per-tensor ``r`` (P5) and view codes of one bucket."""

    s: Tensor  # (R,) zero where no view fired
    r: Tensor  # (T,)
    views: Tensor  # (T,) int8: 0 none, 1 channel, 2 layer


def squared_row_sums(
    layout: Layout, ps: Sequence[Tensor], gs: Sequence[Tensor], us: Sequence[Tensor]
) -> Tensor:
    """(P1) The channel view's sums of a bucket as a new (4, R + 1) tensor: ``<g,p>``,
    ``|g|^2``, ``|p|^2``, ``<p,u>`` per row, zeros for ineligible tensors and the last column.

    Written for ``torch.compile`` (SGDP's compiled steps): no ``out=`` and no buffer of the
    layout is written, and Inductor fuses each tensor's four sums into one loop. Not for
    sharded (DTensor) buckets.
    """
    cols = []
    for r, p, g, u in zip(layout.rows, ps, gs, us, strict=True):
        if r.axis is None:
            cols.append(p.new_zeros(4, 1, dtype=layout.stats.dtype))
            continue
        dims = [d for d in range(p.ndim) if d != r.axis]
        sums = [(g * p).sum(dims), (g * g).sum(dims), (p * p).sum(dims), (p * u).sum(dims)]
        cols.append(torch.stack(sums))
    cols.append(cols[0].new_zeros(4, 1))
    return torch.cat(cols, dim=1)


def rows_of(layout: Layout, rows: Tensor) -> list[Tensor]:
    """A (R,) vector as one broadcastable view per tensor (``per_row`` without the copy into
    the layout's buffer), in the sums' dtype."""
    rows = rows.to(layout.stats.dtype)
    return [
        rows[r.start + r.local_start : r.start + r.local_start + r.local_rows].view(r.bshape)
        for r in layout.rows
    ]


def projection(
    layout: Layout,
    *,
    delta: float,
    eps: float,
    wd_ratio: float,
    stats: Tensor | None = None,
) -> Projected:
    """(P2)-(P5) from the row sums of a whole bucket; nothing is read on the host.

    Rows and whole tensors (the layer view's single row) are handled as one vector of
    ``R + T`` entries: the layer view's sums are the totals of the channel view's rows.
    ``stats``: the sums with squared norms (``squared_row_sums``); by default the layout's
    buffer, filled by ``row_sums`` with norms.
    """
    seg, table = layout.seg, layout.table
    if stats is None:
        stats = layout.stats
        stats[1:3].square_()  # squared norms: the quantities that add up over shards and rows
        for group in layout.shard_groups:  # FSDP2: rows or parts of rows live on other ranks
            torch.distributed.all_reduce(stats, group=group)
    n_rows = seg.shape[0]
    totals = stats[:, table].sum(-1)  # the padding column adds zeros
    gp, gg, pp, pu = torch.cat([stats[:, :n_rows], totals], dim=1)  # (R + T,): rows, tensors
    pn = pp.sqrt()
    # (P2), D1, D2: |<g,p>| / (max(|g|, eps) max(|p|, eps)); (P3): below delta / sqrt(n)
    below = gp.abs() / (gg.sqrt().clamp_min(eps) * pn.clamp_min(eps)) < layout.threshold(delta)
    row_below = torch.cat([below[:n_rows], below.new_ones(1)])  # padding counts as below
    channel = row_below[table].all(-1) & layout.eligible  # every row below (a NaN row is not)
    layer = below[n_rows:] & ~channel & layout.eligible  # D3: channel first
    # (P4) u - p_hat <p_hat, u> = u - p * (<p,u> / (|p| + eps)^2), per row or per tensor
    coef = pu / (pn + eps).square()
    s_layer = torch.where(layer, coef[n_rows:], 0.0)
    s = torch.where(channel[seg], coef[:n_rows], s_layer[seg])
    fired = channel | layer
    r = 1 - (1 - wd_ratio) * fired.to(stats.dtype)  # (P5)
    views = channel.to(torch.int8) + 2 * layer.to(torch.int8)
    return Projected(s, r, views)


def per_row(layout: Layout, rows: Tensor, slot: int = 0) -> list[Tensor]:
    """Copies a (R,) vector into the layout's buffer ``slot``; returns its view for each
    tensor, broadcastable against it (the channel axis kept, other dims of size 1)."""
    layout.rowbuf[slot].copy_(rows)
    return layout.row_views[slot]


def per_tensor(x: Tensor) -> list[Tensor]:
    """(T,) -> T zero-dim views, usable as the scalars of ``torch._foreach_*`` tensor lists."""
    return list(x.unbind())


def flat_buffers(
    like: Sequence[Tensor],
    *,
    overlap: bool = False,
    cache: dict | None = None,
    slot: int = 0,
) -> list[Tensor]:
    """Contiguous temporaries shaped like ``like``: views of one flat buffer.

    ``overlap``: every view starts at the buffer's start (scratch used one tensor at a time,
    sized by the largest tensor). With ``cache``, the buffer is kept there (per slot, device
    and dtype, grown to the largest request) and reused by the next bucket and step: a fresh
    allocation of this size is a new mapping on Linux, and writing into it first costs a page
    fault per 4 KiB (on ResNet-50 shapes: 57 ms per AdamP step against 42 ms reused).
    """
    sizes = [x.numel() for x in like]
    total = max(sizes) if overlap else sum(sizes)
    dtype, device = like[0].dtype, like[0].device
    key = (slot, device, dtype)
    flat = cache.get(key) if cache is not None else None
    if flat is None or flat.numel() < total:
        flat = torch.empty(total, dtype=dtype, device=device)
        if cache is not None:
            cache[key] = flat
    flat = flat[:total]
    if overlap:
        return [flat[:n].view(x.shape) for n, x in zip(sizes, like, strict=True)]
    return [b.view(x.shape) for b, x in zip(flat.split(sizes), like, strict=True)]


def foreach_into(op: str, out: list[Tensor] | None, *args: Any) -> list[Tensor]:
    """``torch._foreach_<op>(*args)``, or with ``out``, ``torch.<op>`` tensor by tensor into
    ``out`` (``args``: lists of tensors, or scalars shared by every tensor)."""
    if out is None:
        return getattr(torch, f"_foreach_{op}")(*args)
    fn = getattr(torch, op)
    per = [a if isinstance(a, (list, tuple)) else [a] * len(out) for a in args]
    for o, *xs in zip(out, *per, strict=True):
        fn(*xs, out=o)
    return out


# ----------------------------------------------------------------------------- scalars


def step_scalars(steps: Sequence[Tensor], device: torch.device) -> Tensor:
    """The step counts ``t`` of a bucket as a (T,) float64 tensor on ``device`` (no host read).

    Bias corrections are formed from it in float64, so float64 trajectories follow the
    reference's Python-float arithmetic.
    """
    t = torch.stack(list(steps)).to(torch.float64)
    return t.to(device, non_blocking=True)


def as_device_scalar(x: Any, device: torch.device) -> Tensor | float:
    """A tensor learning rate moved to the parameters' device; a float stays a float."""
    if isinstance(x, Tensor):
        return x.to(device=device, dtype=torch.float64, non_blocking=True)
    return float(x)
