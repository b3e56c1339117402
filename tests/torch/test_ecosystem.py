"""The PyTorch ecosystem's generic optimizer checks, run on adamp_torch with controls.

Ported in our own words from three outside suites (each test names the check it follows):

- PyTorch: ``test/test_optim.py`` (``TestOptimRenewed``) and the error tables of
  ``torch/testing/_internal/common_optimizers.py``;
- timm: ``tests/test_optim.py`` (``_test_basic_cases``, ``_test_state_dict``,
  ``_test_rosenbrock``, ``_test_model``);
- pytorch-optimizer: ``tests/test_optimizers.py`` and ``test_general_optimizer_parameters.py``.

Each check runs on AdamP and SGDP, once per implementation of a step (the ``step_path``
fixture), and on the controls where the check means something for them: the official package
(``adamp.AdamP`` / ``adamp.SGDP`` 0.3.0) and ``torch.optim.AdamW`` / ``torch.optim.SGD``.
Expected values are what the source suites assert (the loss moves the right way, a resumed or
copied optimizer equals its original), invariants (a power-of-two loss scale changes nothing),
or the controls' own behaviour. Where the official package fails a check (it validates no
hyperparameter, it cannot step complex parameters), docs/torch.md's migration notes say how
adamp_torch differs.
"""

from __future__ import annotations

import copy
import doctest
import functools
import io
import pickle

import adamp
import pytest
import torch
from adamp_torch import SGDP, AdamP, to_official_state_dict
from adamp_torch._base import IMPLS
from torch.nn import Parameter

from tests.torch.helpers import REL_TOL, bn_cnn, image_batch

# name: (class, hyperparameters, family). Same hyperparameters for a class of ours and its
# controls, so that a check compares like with like.
ADAM_HP = dict(lr=1e-2, weight_decay=1e-2)
SGD_HP = dict(lr=1e-3, momentum=0.9, weight_decay=1e-2)
SUBJECTS = {
    "AdamP": (AdamP, ADAM_HP, "adam"),
    "SGDP": (SGDP, SGD_HP, "sgd"),
    "official-AdamP": (adamp.AdamP, ADAM_HP, "adam"),
    "official-SGDP": (adamp.SGDP, SGD_HP, "sgd"),
    "torch-AdamW": (torch.optim.AdamW, ADAM_HP, "adam"),
    "torch-SGD": (torch.optim.SGD, SGD_HP, "sgd"),
}
OURS = ("AdamP", "SGDP")
OFFICIAL = ("official-AdamP", "official-SGDP")
CONTROLS = ("torch-AdamW", "torch-SGD")


def _cases(names) -> list[tuple[str, str | None]]:
    """(name, implementation): ours once per implementation, each control once (None: it
    takes no ``impl``)."""
    return [(n, impl) for n in names for impl in (IMPLS if n in OURS else (None,))]


def _id(name: str, impl: str | None) -> str:
    return name if impl is None else f"{name}-{impl}"


def subjects(*names: str):
    """Parametrises ``name`` and ``step_path`` (the conftest fixture, given each of our
    implementations in turn) over the subjects named, by default all."""
    cases = [pytest.param(n, i, id=_id(n, i)) for n, i in _cases(names or tuple(SUBJECTS))]
    return pytest.mark.parametrize(("name", "step_path"), cases, indirect=["step_path"])


def build(name: str, impl: str | None, params, **override) -> torch.optim.Optimizer:
    cls, hp, _ = SUBJECTS[name]
    kwargs = {**hp, **override}
    if impl is not None:
        kwargs["impl"] = impl
    return cls(params, **kwargs)


def family(name: str) -> str:
    return SUBJECTS[name][2]


def assert_same(a, b, path: str = "") -> None:
    """Equal keys and values all the way down; tensors equal in value, dtype and device."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.device == b.device and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (path, list(a), list(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert type(a) is type(b) and a == b, (path, a, b)


# -- the problems of the source suites ------------------------------------------------------


def linear_problem(seed: int = 0, contiguous: bool = True, dtype=torch.float32):
    """timm's and PyTorch's problem: loss = |W x + b|^2 with W (10, 5), b (10,), x (5,)."""
    gen = torch.Generator().manual_seed(seed)
    if contiguous:
        w = torch.randn(10, 5, generator=gen, dtype=dtype)
        b = torch.randn(10, generator=gen, dtype=dtype)
    else:  # strided views: every other element of a larger tensor
        w = torch.randn(10, 5, 2, generator=gen, dtype=dtype)[..., 0]
        b = torch.randn(10, 2, generator=gen, dtype=dtype)[..., 0]
    x = torch.randn(5, generator=gen, dtype=dtype)
    return Parameter(w), Parameter(b), x


def closure_for(opt, w, b, x):
    def closure():
        opt.zero_grad()
        loss = (w.mv(x) + b).pow(2).sum()
        loss.backward()
        return loss

    return closure


def assert_descends(opt, w, b, x, steps: int) -> None:
    """``steps`` closure steps on the linear problem end below the loss they started from."""
    closure = closure_for(opt, w, b, x)
    initial = closure().item()
    for _ in range(steps):
        opt.step(closure)
    assert closure().item() < initial


def small_cnn(seed: int = 0, dtype=torch.float32) -> torch.nn.Module:
    return bn_cnn(4, 3, seed, dtype)


def cnn_batch(t: int, dtype=torch.float32):
    return image_batch(t, dtype, size=8, classes=3, seed=100)


def train(model, opt, steps: int, start: int = 0) -> None:
    dtype = next(model.parameters()).dtype
    for t in range(start, start + steps):
        x, y = cnn_batch(t, dtype)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def same_params(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


# -- construction, printing, errors ----------------------------------------------------------


@subjects()
def test_can_be_printed(name, step_path):
    """PyTorch ``test_optimizer_can_be_printed``; timm prints every optimizer it builds."""
    w, b, _ = linear_problem()
    text = repr(build(name, step_path, [w, b]))
    assert text.startswith(SUBJECTS[name][0].__name__) and "lr:" in text


# (family or None for every family, kwargs, error, regex naming the argument). From PyTorch's
# error tables (common to all optimizers, then Adam's and SGD's) and pytorch-optimizer's
# test_general_optimizer_parameters (negative lr, eps, weight_decay, wd_ratio, betas).
HYPER_ERRORS = [
    (None, dict(lr=-1e-2), ValueError, r"(?i)\blr\b|learning rate"),
    (None, dict(weight_decay=-1.0), ValueError, r"weight_decay"),
    ("adam", dict(eps=-1e-6), ValueError, r"(?i)eps"),
    ("adam", dict(betas=(1.0, 0.0)), ValueError, r"beta"),
    ("adam", dict(betas=(-0.1, 0.1)), ValueError, r"beta"),
    ("adam", dict(betas=(0.1, -0.1)), ValueError, r"beta"),
    ("sgd", dict(momentum=-0.5), ValueError, r"momentum"),
    # torch.optim.SGD's rule, kept by SGDP (the official package accepts it; docs/torch.md)
    ("sgd", dict(momentum=0.0, nesterov=True), ValueError, r"(?i)nesterov"),
    ("sgd", dict(momentum=0.9, dampening=0.5, nesterov=True), ValueError, r"(?i)nesterov"),
]
OURS_ONLY_ERRORS = [  # arguments only AdamP/SGDP have (pytorch-optimizer's test_wd_ratio)
    (dict(wd_ratio=-1e-3), ValueError, r"wd_ratio"),
    (dict(delta=-1.0), ValueError, r"delta"),
    (dict(lr=torch.tensor([1e-3, 1e-3])), ValueError, r"\blr\b"),  # PyTorch: 1-element lr
]


@pytest.mark.parametrize(
    ("name", "step_path", "row"),
    [
        pytest.param(n, i, row, id=f"{_id(n, i)}-{row}")
        for n, i in _cases((*OURS, *CONTROLS))
        for row, (fam, *_) in enumerate(HYPER_ERRORS)
        if fam in (None, family(n))
    ],
    indirect=["step_path"],
)
def test_bad_hyperparameters_raise(name, step_path, row):
    """PyTorch ``test_errors`` (construction errors), pytorch-optimizer's negative-value
    checks. The official package validates none of these (docs/torch.md); not a control.
    Both sources pass ``params=None``: the arguments are checked before params is read."""
    _, kwargs, error, regex = HYPER_ERRORS[row]
    with pytest.raises(error, match=regex):
        build(name, step_path, [Parameter(torch.randn(2, 3))], **kwargs)
    with pytest.raises(error, match=regex):
        build(name, step_path, None, **kwargs)


@pytest.mark.parametrize("row", range(len(OURS_ONLY_ERRORS)))
@subjects(*OURS)
def test_bad_projection_hyperparameters_raise(name, step_path, row):
    kwargs, error, regex = OURS_ONLY_ERRORS[row]
    for params in ([Parameter(torch.randn(2, 3))], None):
        with pytest.raises(error, match=regex):
            build(name, step_path, params, **kwargs)


@subjects()
def test_param_list_errors_of_the_base_class(name, step_path):
    """PyTorch's errors common to all optimizers: a bare tensor as ``params``, duplicates in a
    group (warning) and across groups, names on some params only."""
    p, q = Parameter(torch.randn(2, 3)), Parameter(torch.randn(2, 3))
    with pytest.raises(TypeError, match="iterable of Tensors or dicts"):
        build(name, step_path, p)
    with pytest.warns(UserWarning, match="duplicate parameters"):
        build(name, step_path, [p, p])
    with pytest.raises(ValueError, match="more than one parameter group"):
        build(name, step_path, [{"params": p}, {"params": p}])
    with pytest.raises(ValueError, match="with/without names"):
        build(name, step_path, [("w", p), q])


@subjects(*OURS, "torch-AdamW")
def test_complex_params(name, step_path):
    """PyTorch ``test_complex``: torch.optim steps a complex parameter as its real view. The
    projection is not defined for complex rows, so adamp_torch refuses them when built, with
    the workaround in the message; the official package fails inside its first step (after its
    state has moved). Optimising ``view_as_real(p)`` works on every subject."""
    z = torch.randn(4, 3, dtype=torch.complex64, requires_grad=True)
    if name in OURS:
        with pytest.raises(ValueError, match=r"complex parameters.*view_as_real"):
            build(name, step_path, [z])
    else:
        opt = build(name, step_path, [z])
        z.grad = torch.randn_like(z)
        opt.step()
    r = Parameter(torch.view_as_real(z.detach().clone()))
    opt = build(name, step_path, [r])
    r.grad = torch.randn_like(r)
    before = r.detach().clone()
    opt.step()
    assert not torch.equal(r, before)


@subjects(*OURS, "torch-AdamW")
def test_sparse_gradient_is_a_clear_error(name, step_path):
    """pytorch-optimizer ``test_sparse_gradient``: an optimizer without sparse support says so
    (the official package fails inside aten with ``NotImplementedError``)."""
    emb = torch.nn.Embedding(4, 3, sparse=True)
    opt = build(name, step_path, emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


# -- stepping ------------------------------------------------------------------------------


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@subjects()
def test_goes_right_direction(name, step_path, contiguous):
    """PyTorch ``test_forloop_goes_right_direction``, timm ``_test_basic_cases_template``: 20
    steps with a closure lower the loss, for contiguous and strided parameters. The C step
    takes contiguous tensors only, so strided ones run with the automatic choice there."""
    w, b, x = linear_problem(contiguous=contiguous)
    impl = step_path if contiguous or step_path != "native" else None
    assert_descends(build(name, impl, [w, b]), w, b, x, 20)


def _group_forms(name: str, w, b):
    """timm's param-group forms (``_build_params_dict``, ``_build_params_dict_single``): two
    groups with the top-level lr in one, one group with its own lr, and one group with its own
    lr and no top-level lr at all (SGDP's lr is required only where a group lacks one)."""
    lr = SUBJECTS[name][1]["lr"]
    return [
        ([{"params": [w]}, {"params": [b], "lr": 3 * lr}], {}),
        ([{"params": [b], "lr": 3 * lr}], {}),
        ([{"params": [b], "lr": 3 * lr}], {"lr": None}),
    ]


@pytest.mark.parametrize("form", range(3))
@subjects()
def test_param_group_forms(name, step_path, form):
    """timm's basic cases over its param-group forms."""
    w, b, x = linear_problem()
    groups, over = _group_forms(name, w, b)[form]
    cls, hp, _ = SUBJECTS[name]
    kwargs = {k: v for k, v in hp.items() if k not in over}
    if step_path is not None:
        kwargs["impl"] = step_path
    opt = cls(groups, **kwargs)
    assert [g["lr"] for g in opt.param_groups][-1] == 3 * hp["lr"]
    assert_descends(opt, w, b, x, 50)


@subjects()
def test_param_groups_weight_decay(name, step_path):
    """PyTorch ``test_param_groups_weight_decay``: the bias in a group without decay."""
    w, b, x = linear_problem()
    opt = build(name, step_path, [{"params": [w]}, {"params": [b], "weight_decay": 0.0}])
    assert_descends(opt, w, b, x, 20)


@subjects()
def test_param_groups_lr(name, step_path):
    """PyTorch ``test_param_groups_lr``: a group left at the top-level lr of 1e-28 does not
    move (float32: lr * update and lr * weight_decay are far below half an ulp of the
    parameter), while the group with its own lr trains."""
    w, b, x = linear_problem()
    other = Parameter(torch.randn(2, 3))
    before = other.detach().clone()
    lr = SUBJECTS[name][1]["lr"]
    opt = build(name, step_path, [{"params": [w, b], "lr": lr}, {"params": [other]}], lr=1e-28)
    closure = closure_for(opt, w, b, x)
    initial = closure().item()
    for _ in range(20):
        closure()
        other.grad = torch.rand_like(other)
        opt.step()
    assert closure().item() < initial
    assert torch.equal(other, before)


@subjects()
def test_step_is_noop_without_grads(name, step_path):
    """PyTorch ``test_step_is_noop_when_params_have_no_grad``; pytorch-optimizer
    ``test_closure`` (a closure that does not backpropagate)."""
    ps = [torch.randn(2, 3) for _ in range(2)]
    before = [p.clone() for p in ps]
    opt = build(name, step_path, ps)
    assert opt.step(lambda: torch.tensor([1.0])).item() == 1.0
    assert same_params(ps, before) and all(len(opt.state[p]) == 0 for p in ps)


@subjects()
def test_step_is_noop_for_zero_grads(name, step_path):
    """PyTorch ``test_step_is_noop_for_zero_grads`` (without weight decay, which moves
    parameters whatever the gradient)."""
    p = Parameter(torch.randn(5, 1))
    before = p.detach().clone()
    opt = build(name, step_path, [p], weight_decay=0.0)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(p, before)


@subjects(*OURS, *CONTROLS)
def test_autograd_sees_the_step_write_params(name, step_path):
    """PyTorch's in-place ops bump the version counter of what they write, so that a
    backward through a graph that saved a tensor before it was written raises instead of
    using the new values. A step writes its params in place: a backward through a graph
    built before the step must raise, as it does after torch.optim's steps; and the state
    tensors' counters move too (any graph built on them sees the write). The official package
    writes through ``p.data``, which autograd does not see: its stale backward goes through."""
    p = Parameter(torch.randn(4, 3))
    opt = build(name, step_path, [p])
    p.grad = torch.randn(4, 3)
    opt.step()  # the state exists
    state = [v for v in opt.state[p].values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    versions = [v._version for v in state]
    stale = (p * p).sum()  # saves p for its backward
    p.grad = torch.randn(4, 3)
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        stale.backward()
    assert state and all(v._version > n for v, n in zip(state, versions, strict=True))


@subjects(*OURS, *CONTROLS)
def test_zero_rank_and_empty_params(name, step_path):
    """pytorch-optimizer's zero-rank parameter; PyTorch's empty last parameter of
    ``_test_derived_optimizers``: both step, the scalar against its gradient. (The official
    package fails on the empty matrix: its channel view cannot reshape it.)"""
    scalar, empty = Parameter(torch.tensor(1.0)), Parameter(torch.ones(0, 3))
    opt = build(name, step_path, [scalar, empty])
    scalar.grad, empty.grad = torch.tensor(1.0), torch.ones(0, 3)
    opt.step()
    assert scalar.item() < 1.0 and empty.shape == (0, 3)


@subjects(*OURS, *CONTROLS)
def test_closure_is_called_once_with_grad_enabled(name, step_path):
    """PyTorch's and timm's closure steps: the closure runs once per step, with autograd on
    even where ``step`` is called under ``no_grad``, and its loss is what ``step`` returns.
    (The official package runs the closure in the caller's grad mode.)"""
    w, b, x = linear_problem()
    opt = build(name, step_path, [w, b])
    calls = []

    def closure():
        opt.zero_grad()
        loss = (w.mv(x) + b).pow(2).sum()
        loss.backward()
        calls.append(loss)
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert len(calls) == 1 and loss is calls[0] and loss.grad_fn is not None


@subjects()
def test_zero_grad(name, step_path):
    """``zero_grad()`` sets grads to None (PyTorch's default since 2.0); ``set_to_none=False``
    zeroes them in place."""
    w, b, x = linear_problem()
    opt = build(name, step_path, [w, b])
    closure_for(opt, w, b, x)()
    grad = w.grad
    opt.zero_grad(set_to_none=False)
    assert w.grad is grad and not w.grad.any()
    opt.zero_grad()
    assert w.grad is None and b.grad is None


@subjects()
def test_add_param_group_later(name, step_path):
    """PyTorch's and timm's fine-tuning case: a group added after some steps trains with its
    own hyperparameters, the existing state is left alone, a parameter already present is
    refused, and the two-group optimizer saves and loads."""
    model = small_cnn()
    body, head = list(model[:2].parameters()), list(model[4].parameters())
    opt = build(name, step_path, body)
    train(model, opt, 2)
    saved = {id(p): copy.deepcopy(opt.state[p]) for p in body}
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [body[0]]})
    assert len(opt.param_groups) == 1
    lr = SUBJECTS[name][1]["lr"]
    opt.add_param_group({"params": head, "lr": lr / 2})
    assert opt.param_groups[1]["lr"] == lr / 2
    for p in body:
        assert_same(opt.state[p], saved[id(p)])
    before = [p.detach().clone() for p in head]
    train(model, opt, 2, start=2)
    assert not any(torch.equal(p, q) for p, q in zip(head, before, strict=True))
    twin = small_cnn()
    twin.load_state_dict(model.state_dict())
    opt2 = build(name, step_path, list(twin[:2].parameters()))
    opt2.add_param_group({"params": list(twin[4].parameters()), "lr": lr / 2})
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    train(model, opt, 2, start=4)
    train(twin, opt2, 2, start=4)
    assert same_params(model.parameters(), twin.parameters())


@subjects()
def test_non_empty_state(name, step_path):
    """PyTorch ``test_non_empty_state``: after a step, every parameter that had a gradient has
    state (for SGD, with momentum)."""
    model = small_cnn()
    opt = build(name, step_path, model.parameters())
    train(model, opt, 1)
    assert all(len(opt.state[p]) > 0 for p in model.parameters())


@subjects(*OURS, *CONTROLS)
def test_mixed_dtypes_in_one_group(name, step_path):
    """PyTorch ``test_mixed_device_dtype`` on one device: a group with float64, float32,
    float16 and bfloat16 parameters steps each as an optimizer of its own would. The C step
    takes one dtype per group: named, it refuses such a group, naming ``impl`` (the torch ops
    step it, in the "foreach" case)."""
    torch.manual_seed(0)
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    ps = [Parameter(torch.randn(4, 3).to(d)) for d in dtypes]
    qs = [Parameter(p.detach().clone()) for p in ps]
    if step_path == "native":
        with pytest.raises(ValueError, match="impl"):
            opt = build(name, step_path, ps)
            for p in ps:
                p.grad = torch.zeros_like(p)
            opt.step()
        return
    opt = build(name, step_path, ps)
    alone = [build(name, step_path, [q]) for q in qs]
    for _ in range(3):
        for p, q in zip(ps, qs, strict=True):
            p.grad = torch.randn(4, 3).to(p.dtype)
            q.grad = p.grad.clone()
        opt.step()
        for o in alone:
            o.step()
    assert same_params(ps, qs)


# -- checkpoints ---------------------------------------------------------------------------


@subjects()
def test_state_dict_deterministic(name, step_path):
    """PyTorch ``test_state_dict_deterministic``, timm ``_test_state_dict``: an optimizer that
    loads another's state dict continues in lockstep with it, its ``state_dict()`` equals the
    original's (keys and values), the dict it loaded is not modified, and a param group that is
    repeated is saved alike."""
    w, b, x = linear_problem()
    opt = build(name, step_path, [w, b])
    closure = closure_for(opt, w, b, x)
    for _ in range(10):
        opt.step(closure)
    with torch.no_grad():
        w2, b2 = Parameter(w.clone()), Parameter(b.clone())
    opt2 = build(name, step_path, [w2, b2])
    closure2 = closure_for(opt2, w2, b2, x)
    saved = copy.deepcopy(opt.state_dict())
    loaded = copy.deepcopy(opt.state_dict())
    opt2.load_state_dict(loaded)
    assert_same(loaded, saved)
    assert_same(opt2.state_dict(), opt.state_dict())  # at once after loading, too
    for _ in range(10):
        opt.step(closure)
        opt2.step(closure2)
        assert torch.equal(w, w2) and torch.equal(b, b2)
    assert_same(opt2.state_dict(), opt.state_dict())
    opt2.param_groups.extend(opt2.param_groups)
    assert_same(opt2.state_dict()["param_groups"][-1], opt.state_dict()["param_groups"][-1])


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@subjects()
def test_copies_save_alike_and_continue_alike(name, step_path, how):
    """A deep copy, an unpickled copy and a ``torch.save`` / ``torch.load(weights_only=True)``
    round trip (PyTorch ``test_save_load_equality_with_weights_only``) give the original's
    ``state_dict()``; the copies step exactly as the original, and groups added later to
    either are saved alike (not so for the official package)."""
    model = small_cnn()
    opt = build(name, step_path, model.parameters())
    train(model, opt, 3)
    if how == "torch.save":
        buf = io.BytesIO()
        torch.save(opt.state_dict(), buf)
        buf.seek(0)
        twin = small_cnn()
        twin.load_state_dict(model.state_dict())
        copied = build(name, step_path, twin.parameters())
        copied.load_state_dict(torch.load(buf, weights_only=True))
    else:
        pair = (model, opt)
        twin, copied = (
            copy.deepcopy(pair) if how == "deepcopy" else pickle.loads(pickle.dumps(pair))
        )
    assert_same(copied.state_dict(), opt.state_dict())
    train(model, opt, 2, start=3)
    train(twin, copied, 2, start=3)
    assert same_params(model.parameters(), twin.parameters())
    assert_same(copied.state_dict(), opt.state_dict())
    if name in OFFICIAL:  # its copies give later groups torch's "differentiable" key
        return
    opt.add_param_group({"params": [Parameter(torch.ones(3))]})
    copied.add_param_group({"params": [Parameter(torch.ones(3))]})
    assert_same(copied.state_dict()["param_groups"], opt.state_dict()["param_groups"])


@pytest.mark.parametrize("saved_with", [*IMPLS, None], ids=str)
@subjects(*OURS)
def test_loading_keeps_the_own_impl(name, step_path, saved_with):
    """A state dict saved with one implementation (or the automatic choice) resumes with the
    loading optimizer's ``impl``: it says how a process steps, not what the optimizer is, so a
    checkpoint of ``impl="native"`` must not bind a CUDA run to the C step. Everything else
    is the saved dict's, and the two continue alike (float64, fixed gradients, two
    implementations: within REL_TOL)."""
    params, opt, rest = _fixed_run(name, 2, impl=saved_with)
    twin = [Parameter(p.detach().clone()) for p in params]
    opt2 = build(name, step_path, twin, lr=0.5)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    expected = copy.deepcopy(opt.state_dict())
    expected["param_groups"][0]["impl"] = step_path
    assert_same(opt2.state_dict(), expected)
    _continue(params, opt, rest)
    _continue(twin, opt2, rest)
    for p, q in zip(params, twin, strict=True):
        assert (q - p).abs().max() <= REL_TOL[torch.float64] * p.abs().max()


@subjects()
def test_deepcopy_copies_all_public_attrs(name, step_path):
    """PyTorch ``test_deepcopy_copies_all_public_attrs``."""
    model = small_cnn()
    opt = build(name, step_path, model.parameters())
    train(model, opt, 2)

    def public(o):
        return {k for k in o.__dict__ if not k.startswith("_")}

    assert public(copy.deepcopy(opt)) == public(opt)


# Keys that newer versions of an optimizer add to its param groups, deleted from a saved dict
# to play an older one: PyTorch's flags (test_can_load_older_state_dict) and adamp_torch's own
# (the official package and timm save neither).
NEWER_GROUP_KEYS = (
    "maximize",
    "foreach",
    "fused",
    "differentiable",
    "capturable",
    "decoupled_weight_decay",
    "channel_axis",
    "project_buffer",
    "impl",
)


@subjects()
def test_can_load_older_state_dict(name, step_path):
    """PyTorch ``test_can_load_older_state_dict``: a state dict without the newer group keys
    loads and the optimizer steps on. For ours, also: the keys come back with the values they
    had, in their place (torch.optim's come back in another order, ``fused`` as False)."""
    model = small_cnn()
    opt = build(name, step_path, model.parameters())
    train(model, opt, 3)
    full = copy.deepcopy(opt.state_dict())
    older = copy.deepcopy(full)
    for group in older["param_groups"]:
        for key in NEWER_GROUP_KEYS:
            group.pop(key, None)
    opt.load_state_dict(older)
    if name in OURS:
        assert_same(opt.state_dict(), full)
    train(model, opt, 1, start=3)


@subjects()
def test_load_nontensor_step(name, step_path):
    """PyTorch ``test_load_nontensor_step``: a dict whose ``step`` entries are Python numbers
    (as older torch.optim and the official package save them) loads, and the optimizer
    continues exactly as the one that saved it."""
    model = small_cnn()
    opt = build(name, step_path, model.parameters())
    train(model, opt, 3)
    sd = copy.deepcopy(opt.state_dict())
    for st in sd["state"].values():
        if isinstance(st.get("step"), torch.Tensor):
            st["step"] = st["step"].item()
    twin = copy.deepcopy(model)
    opt2 = build(name, step_path, twin.parameters())
    opt2.load_state_dict(sd)
    train(model, opt, 2, start=3)
    train(twin, opt2, 2, start=3)
    assert same_params(model.parameters(), twin.parameters())


@subjects("AdamP", "official-AdamP", "torch-AdamW")
def test_step_state_type(name, step_path):
    """The type of ``state["step"]``: adamp_torch keeps torch.optim's (a 0-d float32 tensor on
    the CPU, so that steps compile and read no counter on the host); the official package keeps
    a Python int (``to_official_state_dict`` converts, test_official_loads_our_checkpoint)."""
    p = Parameter(torch.randn(2, 3, dtype=torch.float64))
    opt = build(name, step_path, [p])
    p.grad = torch.randn_like(p)
    opt.step()
    step = opt.state[p]["step"]
    if name in OFFICIAL:
        assert step == 1 and type(step) is int
    else:
        assert (step.dtype, step.device.type, step.dim(), step.item()) == (
            torch.float32,
            "cpu",
            0,
            1.0,
        )


@subjects()
def test_named_parameters_state_dict(name, step_path):
    """PyTorch ``test_can_load_from_to_named_state_dict``: built from ``named_parameters()``,
    the state dict carries ``param_names`` and loads into a twin built the same way."""
    model = small_cnn()
    opt = build(name, step_path, model.named_parameters())
    train(model, opt, 2)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["param_names"] == [n for n, _ in model.named_parameters()]
    twin = copy.deepcopy(model)
    opt2 = build(name, step_path, twin.named_parameters())
    opt2.load_state_dict(copy.deepcopy(sd))
    assert_same(opt2.state_dict(), sd)
    train(model, opt, 2, start=2)
    train(twin, opt2, 2, start=2)
    assert same_params(model.parameters(), twin.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@subjects()
def test_load_into_params_of_another_dtype(name, step_path, dtype):
    """timm's and PyTorch's ``_test_state_dict``: a state dict loads into an optimizer whose
    parameters were cast to another dtype; the state follows the parameters (for float16, ours
    keeps float32 state, D9), ``step`` keeps its type, and the optimizer steps on."""
    model = small_cnn(dtype=torch.float64)
    opt = build(name, step_path, model.parameters())
    train(model, opt, 2)
    cast = copy.deepcopy(model).to(dtype)
    opt2 = build(name, step_path, cast.parameters())
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    low = dtype == torch.float16 and name in OURS
    for p, q in zip(model.parameters(), cast.parameters(), strict=True):
        for k, v in opt2.state[q].items():
            if k == "step":
                assert type(v) is type(opt.state[p][k])
                assert not isinstance(v, torch.Tensor) or v.dtype == opt.state[p][k].dtype
            else:
                assert v.dtype == (torch.float32 if low else dtype), k
    train(cast, opt2, 1, start=2)
    if name in OURS:  # the others' float16 state underflows (eps = 1e-8 is 0 in float16)
        assert all(torch.isfinite(q).all() for q in cast.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@subjects(*OURS, *CONTROLS)
def test_state_dict_with_cuda_params(name, step_path):
    """PyTorch ``test_state_dict_with_cuda_params``: a CPU optimizer's state dict loads into an
    optimizer of the same parameters on CUDA (the dict passed is not modified, ``step`` stays
    on the CPU), and the two continue alike (float64 on two devices: within REL_TOL)."""
    gen = torch.Generator().manual_seed(0)
    ps = [Parameter(torch.randn(4, 3, generator=gen, dtype=torch.float64)) for _ in range(2)]
    grads = [[torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in ps] for _ in range(5)]
    opt = build(name, step_path, ps)
    for p, g in zip(ps, grads[0], strict=True):
        p.grad = g.clone()
    opt.step()
    qs = [Parameter(p.detach().cuda()) for p in ps]
    # the C step runs on CPUs only: the CUDA twin takes the automatic choice
    opt_cuda = build(name, None if step_path == "native" else step_path, qs)
    saved, loaded = copy.deepcopy(opt.state_dict()), copy.deepcopy(opt.state_dict())
    opt_cuda.load_state_dict(loaded)
    assert_same(loaded, saved)
    for st in opt_cuda.state_dict()["state"].values():
        assert not isinstance(st.get("step"), torch.Tensor) or st["step"].device.type == "cpu"
    for gs in grads[1:]:
        for p, q, g in zip(ps, qs, gs, strict=True):
            p.grad, q.grad = g.clone(), g.cuda()
        opt.step()
        opt_cuda.step()
    for p, q in zip(ps, qs, strict=True):
        assert (q.cpu() - p).abs().max() <= REL_TOL[torch.float64] * p.abs().max()


# -- hooks ---------------------------------------------------------------------------------


@subjects()
def test_step_hooks(name, step_path):
    """PyTorch ``test_step_pre_hook`` / ``test_step_post_hook`` / ``test_step_all_hooks``:
    global and per-optimizer hooks run once per step in PyTorch's order, a pre-hook can
    replace the step's arguments, and removed hooks stop."""
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    w, b, x = linear_problem()
    opt = build(name, step_path, [w, b])
    closure = closure_for(opt, w, b, x)
    seen = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: seen.append("global pre")),
        opt.register_step_pre_hook(lambda o, a, k: seen.append("pre")),
        opt.register_step_post_hook(lambda o, a, k: seen.append("post")),
        register_optimizer_step_post_hook(lambda o, a, k: seen.append("global post")),
    ]
    try:
        opt.step(closure)
        opt.step(closure)
    finally:
        for h in handles:
            h.remove()
    assert seen == ["global pre", "pre", "post", "global post"] * 2
    calls = []

    def counted():
        calls.append(1)
        return closure()

    handle = opt.register_step_pre_hook(lambda o, a, k: ((o, counted), {}))
    opt.step(closure)
    handle.remove()
    opt.step(closure)
    assert len(calls) == 1 and len(seen) == 8


@subjects()
def test_state_dict_hooks(name, step_path):
    """PyTorch ``test_state_dict_pre_hook`` / ``post_hook`` /
    ``test_load_state_dict_pre_hook_and_prepend`` / ``post_hook``: a post-hook adds an entry to
    the saved dict, a load pre-hook takes it out again (after one registered later with
    ``prepend=True``), and the load post-hook sees the loaded optimizer."""
    w, b, x = linear_problem()
    opt = build(name, step_path, [w, b])
    opt.step(closure_for(opt, w, b, x))
    order = []
    opt.register_state_dict_pre_hook(lambda o: order.append("pre"))

    def add_meta(o, sd):
        order.append("post")
        sd["meta"] = "saved by the hook"
        return sd

    opt.register_state_dict_post_hook(add_meta)
    sd = opt.state_dict()
    assert order == ["pre", "post"] and sd["meta"] == "saved by the hook"

    def pop_meta(o, sd):
        order.append("load pre")
        assert sd.pop("meta") == "saved by the hook"
        return sd

    opt2 = build(name, step_path, [Parameter(w.detach().clone()), Parameter(b.detach().clone())])
    opt2.register_load_state_dict_pre_hook(pop_meta)
    opt2.register_load_state_dict_pre_hook(lambda o, sd: order.append("first"), prepend=True)
    opt2.register_load_state_dict_post_hook(lambda o: order.append(("load post", o is opt2)))
    opt2.load_state_dict(sd)
    assert order[2:] == ["first", "load pre", ("load post", True)]
    assert "meta" not in opt2.state_dict()


# -- learning rates, schedulers, loss scaling -----------------------------------------------


SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5),
    "ExponentialLR": lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.95),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20),
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1 / (1 + t)),
    "warmup+cosine": lambda o: torch.optim.lr_scheduler.SequentialLR(
        o,
        [
            torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=5),
            torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=15),
        ],
        milestones=[5],
    ),
    # cycles betas (Adam family) or momentum (SGD family) along with lr
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=o.param_groups[0]["lr"], total_steps=20
    ),
    "ReduceLROnPlateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=1),
    "MultiStepLR": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[5, 10]),
    "PolynomialLR": lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=20),
    "CosineAnnealingWarmRestarts": lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        o, T_0=5
    ),
    # cycles momentum (SGD family) or betas[0] (Adam family) too
    "CyclicLR": lambda o: torch.optim.lr_scheduler.CyclicLR(
        o, base_lr=o.param_groups[0]["lr"] / 4, max_lr=o.param_groups[0]["lr"], step_size_up=5
    ),
    "SWALR": lambda o: torch.optim.swa_utils.SWALR(
        o, swa_lr=o.param_groups[0]["lr"] / 2, anneal_epochs=5
    ),
}


@pytest.mark.parametrize("sched", list(SCHEDULERS))
@subjects()
def test_schedulers(name, step_path, sched):
    """PyTorch ``test_param_group_with_lrscheduler_goes_right_direction`` and timm's scheduled
    basic cases: with each scheduler the loss goes down and the group's lr is the scheduler's."""
    w, b, x = linear_problem()
    opt = build(name, step_path, [w, b])
    scheduler = SCHEDULERS[sched](opt)
    closure = closure_for(opt, w, b, x)
    initial = closure().item()
    for _ in range(20):
        loss = opt.step(closure)
        if sched == "ReduceLROnPlateau":
            scheduler.step(loss.item())
        else:
            scheduler.step()
            assert opt.param_groups[0]["lr"] == scheduler.get_last_lr()[0]
    assert closure().item() < initial


@pytest.mark.parametrize("sched", ["StepLR", "CosineAnnealingLR", "OneCycleLR"])
@subjects()
def test_tensor_lr_equals_float_lr(name, step_path, sched):
    """PyTorch's tensor-lr configs (``lr=torch.tensor(...)``, schedulers writing into it): the
    same trajectory as a float lr, the lr staying a tensor. float64 throughout, so the two
    differ by rounding only (bound: REL_TOL[float64] of tests/torch/helpers.py)."""
    runs = []
    for tensor_lr in (False, True):
        w, b, x = linear_problem(dtype=torch.float64)
        lr = SUBJECTS[name][1]["lr"]
        lr = torch.tensor(lr, dtype=torch.float64) if tensor_lr else lr
        opt = build(name, step_path, [w, b], lr=lr)
        scheduler = SCHEDULERS[sched](opt)
        closure = closure_for(opt, w, b, x)
        for _ in range(6):
            opt.step(closure)
            scheduler.step()
        assert isinstance(opt.param_groups[0]["lr"], torch.Tensor) is tensor_lr
        runs.append([w.detach(), b.detach()])
    for p, q in zip(*runs, strict=True):
        assert (p - q).abs().max() <= REL_TOL[torch.float64] * q.abs().max()


@subjects()
def test_grad_scaler(name, step_path):
    """GradScaler as PyTorch's AMP tests use it: with a power-of-two scale, unscaling is
    exact, so scaled steps equal plain ones bit for bit; ``unscale_`` then gradient clipping
    works; a step whose gradients overflow is skipped and the scale backs off."""
    a, b = small_cnn(), small_cnn()
    opt_a, opt_b = build(name, step_path, a.parameters()), build(name, step_path, b.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for t in range(3):
        x, y = cnn_batch(t)
        opt_a.zero_grad()
        torch.nn.functional.cross_entropy(a(x), y).backward()
        torch.nn.utils.clip_grad_norm_(a.parameters(), 1.0)
        opt_a.step()
        opt_b.zero_grad()
        scaler.scale(torch.nn.functional.cross_entropy(b(x), y)).backward()
        scaler.unscale_(opt_b)
        torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)
        scaler.step(opt_b)
        scaler.update()
    assert same_params(a.parameters(), b.parameters())
    before = [p.detach().clone() for p in b.parameters()]
    state = copy.deepcopy(opt_b.state_dict())
    opt_b.zero_grad()
    scaler.scale(b(torch.full((1, 3, 4, 4), float("inf"))).sum()).backward()
    scaler.step(opt_b)
    scaler.update()
    assert same_params(b.parameters(), before)
    assert_same(opt_b.state_dict(), state)
    assert scaler.get_scale() == 2.0**11


# -- training --------------------------------------------------------------------------------


def rosenbrock(xy):
    x, y = xy
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


ROSENBROCK_LR = {"adam": 5e-2, "sgd": 1e-3}  # timm's test_adamp / test_sgdp


@subjects()
def test_rosenbrock(name, step_path):
    """timm and PyTorch ``_test_rosenbrock``: cyclic coordinate descent (the gradient of x
    alone, then of y alone) from (1.5, 1.5) ends no farther from the minimum (1, 1)."""
    xy = Parameter(torch.tensor([1.5, 1.5]))
    opt = build(name, step_path, [xy], lr=ROSENBROCK_LR[family(name)], weight_decay=0.0)
    solution = torch.tensor([1.0, 1.0])
    initial = xy.detach().dist(solution)

    def closure(axis):
        opt.zero_grad()
        loss = rosenbrock(xy)
        loss.backward()
        with torch.no_grad():
            xy.grad[1 - axis] = 0.0
        return loss

    for i in range(2000):
        opt.step(functools.partial(closure, i % 2))
    assert xy.detach().dist(solution) <= initial


MODEL_LR = {"adam": 5e-2, "sgd": 1e-3}  # timm's _test_model


@subjects()
def test_model_loss_decreases_every_step(name, step_path):
    """timm ``_test_model``: a fixed two-layer sigmoid network whose summed output goes down at
    every one of 20 steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid()
    )
    with torch.no_grad():  # timm's weights
        model[0].weight.copy_(
            torch.tensor([[-0.2109, -0.4976], [-0.1413, -0.3420], [-0.2524, 0.6976]])
        )
        model[0].bias.copy_(torch.tensor([-0.1085, -0.2979, 0.6892]))
        model[2].weight.copy_(torch.tensor([[-0.0508, -0.3941, -0.2843]]))
        model[2].bias.copy_(torch.tensor([-0.0711]))
    x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).reshape(3, 2)
    opt = build(name, step_path, model.parameters(), lr=MODEL_LR[family(name)])
    previous = float("inf")
    for _ in range(20):
        opt.zero_grad()
        loss = model(x).sum()
        loss.backward()
        assert loss.item() < previous
        previous = loss.item()
        opt.step()


TRAIN_LR = {"adam": 5e-2, "sgd": 1e-1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@subjects()
def test_training_lowers_loss(name, step_path, dtype):
    """pytorch-optimizer ``test_f32_optimizers`` / ``test_bf16_optimizers``: training a small
    classifier (bfloat16: a bfloat16 model under CPU autocast) ends below 1/1.5 of the first
    loss."""
    torch.manual_seed(1)
    x = torch.randn(64, 2)
    y = (x[:, 0] * x[:, 1] > 0).float()[:, None]
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).to(
        dtype
    )
    opt = build(name, step_path, model.parameters(), lr=TRAIN_LR[family(name)])
    losses = []
    for _ in range(40):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            logits = model(x.to(dtype))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.to(dtype))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1.5 * losses[-1]


# -- wrappers ------------------------------------------------------------------------------


@subjects()
def test_lookahead_wrapper(name, step_path):
    """pytorch-optimizer ``test_lookahead``: Lookahead around the optimizer trains, and its
    state dict (with the inner optimizer's) saves and loads."""
    from pytorch_optimizer import Lookahead

    model = small_cnn()
    opt = Lookahead(build(name, step_path, model.parameters()), k=3, alpha=0.5)
    x, y = cnn_batch(0)
    first = None
    for _ in range(9):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert torch.nn.functional.cross_entropy(model(x), y).item() < first


@subjects()
def test_sam_wrapper(name, step_path):
    """pytorch-optimizer ``test_sam_optimizer``: SAM builds the optimizer from its own param
    groups (with SAM's keys in them) and trains through first and second steps."""
    from pytorch_optimizer import SAM

    cls, hp, _ = SUBJECTS[name]
    kwargs = dict(hp, **({"impl": step_path} if step_path else {}))
    model = small_cnn()
    opt = SAM(model.parameters(), cls, rho=0.05, **kwargs)
    x, y = cnn_batch(0)
    first = None
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.first_step(zero_grad=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
        first = loss.item() if first is None else first
    assert torch.nn.functional.cross_entropy(model(x), y).item() < first


# -- drop-in for the official package --------------------------------------------------------


@subjects("SGDP", "official-SGDP")
def test_sgdp_lr_required_only_where_a_group_lacks_one(name, step_path):
    """``lr`` is PyTorch's ``required``, as in the official SGDP: groups that all set their own
    lr need no top-level one (and step as with it); a group left without one is an error that
    names lr, at construction and in ``add_param_group``; for ours also after pickling (the
    official optimizer unpickles a copy of the sentinel that torch no longer recognises)."""
    cls = SUBJECTS[name][0]
    impl = {"impl": step_path} if step_path else {}
    w, b, x = linear_problem()
    w2, b2 = Parameter(w.detach().clone()), Parameter(b.detach().clone())
    opt = cls([{"params": [w, b], "lr": 0.01}], momentum=0.9, **impl)
    ref = cls([w2, b2], lr=0.01, momentum=0.9, **impl)
    for _ in range(3):
        opt.step(closure_for(opt, w, b, x))
        ref.step(closure_for(ref, w2, b2, x))
    assert torch.equal(w, w2) and torch.equal(b, b2)
    extra = Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=r"\blr\b"):
        cls([{"params": [w], "lr": 0.01}, {"params": [extra]}], **impl)
    with pytest.raises(ValueError, match=r"\blr\b"):
        cls([extra], **impl)
    for o in (opt, pickle.loads(pickle.dumps(opt))) if name in OURS else (opt,):
        with pytest.raises(ValueError, match=r"\blr\b"):
            o.add_param_group({"params": [extra]})
        assert len(o.param_groups) == 1
        o.add_param_group({"params": [extra], "lr": 0.1})


def _fixed_run(name: str, steps: int, impl: str | None = None):
    """float64 parameters and fixed gradients (not a model's, whose training would amplify
    rounding differences) stepped by ``name``; returns (params, optimizer, grads to come)."""
    gen = torch.Generator().manual_seed(7)
    shapes = [(6, 3, 2, 2), (6,), (4, 5)]
    params = [Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(6)]
    opt = build(name, impl, params)
    for t in range(steps):
        for p, g in zip(params, grads[t], strict=True):
            p.grad = g.clone()
        opt.step()
    return params, opt, grads[steps:]


def _continue(params, opt, grads):
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("name", OURS)
def test_official_loads_our_checkpoint(step_path, name):
    """Issue: a checkpoint of ours, loaded by the official package, continues bit for bit.

    The official optimizer A steps 3 times; ours loads A's state dict; the official C loads
    ``to_official_state_dict`` of ours' ``state_dict()``, which equals A's own state dict
    (keys, int steps, tensors); A and C then take the same 3 steps to the same parameters bit
    for bit (float64). Loaded without the conversion, AdamP's float32 step tensor makes the
    official bias corrections float32, and the parameters drift (the conversion matters)."""
    official = f"official-{name}"
    params_a, opt_a, rest = _fixed_run(official, 3)
    sd_a = copy.deepcopy(opt_a.state_dict())
    ours = build(name, step_path, [Parameter(p.detach().clone()) for p in params_a])
    ours.load_state_dict(copy.deepcopy(sd_a))
    converted = to_official_state_dict(ours.state_dict())
    assert_same(converted, sd_a)
    runs = {}
    for how, sd in (("converted", converted), ("raw", ours.state_dict())):
        params = [Parameter(p.detach().clone()) for p in params_a]
        opt = build(official, None, params)
        opt.load_state_dict(copy.deepcopy(sd))
        _continue(params, opt, rest)
        runs[how] = params
    _continue(params_a, opt_a, rest)
    assert same_params(runs["converted"], params_a)
    if name == "AdamP":  # SGDP keeps no step: nothing to convert
        assert not same_params(runs["raw"], params_a)


@pytest.mark.parametrize("name", OURS)
def test_to_official_state_dict(step_path, name):
    """The conversion copies (the source is left as it was), turns ``step`` into ints, leaves
    out only adamp_torch's own group keys (a scheduler's ``initial_lr`` stays), and refuses a
    channel axis the official code cannot take."""
    model = small_cnn(dtype=torch.float64)
    opt = build(name, step_path, model.parameters())
    torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    train(model, opt, 2)
    sd = opt.state_dict()
    kept = copy.deepcopy(sd)
    out = to_official_state_dict(sd)
    assert_same(sd, kept)
    for key, st in out["state"].items():
        for k, v in st.items():
            if k == "step":
                assert type(v) is int and v == int(sd["state"][key]["step"].item()) == 2
            else:
                assert torch.equal(v, sd["state"][key][k]) and v is not sd["state"][key][k]
    for g, h in zip(out["param_groups"], sd["param_groups"], strict=True):
        assert "initial_lr" in g
        assert set(h) - set(g) <= {"channel_axis", "project_buffer", "impl"}
        assert all(g[k] == h[k] for k in g)
    sd["param_groups"][0]["channel_axis"] = 1
    with pytest.raises(ValueError, match="channel_axis"):
        to_official_state_dict(sd)


def test_checkpoint_module_examples():
    """The docstring examples of ``adamp_torch.checkpoint`` run as written."""
    import adamp_torch.checkpoint

    result = doctest.testmod(adamp_torch.checkpoint, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", OURS)
def test_timm_state_dict_with_caution(step_path, name):
    """timm's AdamP/SGDP save a ``caution`` group key (its cautious variants, not implemented
    here): a state dict with ``caution=False`` loads and continues as the official one; with
    ``caution=True`` loading raises, naming it, and leaves the optimizer as it was."""
    params_a, opt_a, rest = _fixed_run(f"official-{name}", 2)
    sd = copy.deepcopy(opt_a.state_dict())
    params = [Parameter(p.detach().clone()) for p in params_a]
    ours = build(name, step_path, params)
    for group in sd["param_groups"]:
        group["caution"] = True
    with pytest.raises(ValueError, match="caution=True"):
        ours.load_state_dict(sd)
    assert len(ours.state) == 0 and "caution" not in ours.param_groups[0]
    for group in sd["param_groups"]:
        group["caution"] = False
    ours.load_state_dict(sd)
    if name == "SGDP":  # the official behaviour (D6), which the loaded groups lack
        ours.param_groups[0]["project_buffer"] = True
    _continue(params, ours, rest)
    _continue(params_a, opt_a, rest)
    for p, q in zip(params, params_a, strict=True):  # float64, two implementations
        assert (p - q).abs().max() <= REL_TOL[torch.float64] * q.abs().max()


@subjects()
def test_pcgrad_wrapper(name, step_path):
    """pytorch-optimizer ``test_pc_grad_optimizers``: PCGrad projects two tasks' conflicting
    gradients before the optimizer steps; two heads on one body train."""
    from pytorch_optimizer import PCGrad

    torch.manual_seed(0)
    body, heads = torch.nn.Linear(4, 8), [torch.nn.Linear(8, 1) for _ in range(2)]
    params = [*body.parameters(), *(p for h in heads for p in h.parameters())]
    opt = PCGrad(build(name, step_path, params, lr=TRAIN_LR[family(name)]))
    x = torch.randn(32, 4)
    y = (x.sum(1, keepdim=True) > 0).float()

    def losses():
        z = torch.relu(body(x))
        return [
            torch.nn.functional.binary_cross_entropy_with_logits(heads[0](z), y),
            torch.nn.functional.l1_loss(heads[1](z), y),
        ]

    first = sum(losses()).item()
    for _ in range(10):
        opt.zero_grad()
        opt.pc_backward(losses())
        opt.step()
    assert sum(losses()).item() < first
