"""adamp_torch as a torch.optim.Optimizer: groups, closures, schedulers, state dicts, errors.

Expected values are either another run of adamp_torch (an invariant: resuming equals not
stopping, a tensor lr equals a float lr, a param group equals its own optimizer), the official
package (its state dicts), or exact arithmetic stated in a comment.
"""

from __future__ import annotations

import copy
import warnings

import adamp
import pytest
import torch
from adamp_torch import SGDP, AdamP, ViewCounter

from adamp_core.testing import rel_err
from tests.torch.helpers import REL_TOL, bn_cnn, image_batch

OPTS = {
    "adamp": (AdamP, dict(lr=1e-2, weight_decay=0.1)),
    "sgdp": (SGDP, dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
}


def _model(seed: int = 0, dtype=torch.float64) -> torch.nn.Module:
    return bn_cnn(8, 5, seed, dtype)


def _batch(step: int, dtype=torch.float64):
    return image_batch(step, dtype, size=16, classes=5, seed=1000)


def _train(model, opt, steps, start=0, scheduler=None):
    for t in range(start, start + steps):
        x, y = _batch(t, next(model.parameters()).dtype)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("name", OPTS)
def test_signature_matches_official(name):
    """Positional order and defaults of PyPI adamp 0.3.0 (read from the official classes)."""
    import inspect

    ours, theirs = OPTS[name][0], {"adamp": adamp.AdamP, "sgdp": adamp.SGDP}[name]
    sig_o = inspect.signature(ours.__init__).parameters
    sig_t = inspect.signature(theirs.__init__).parameters
    positional = [k for k, v in sig_o.items() if v.kind is v.POSITIONAL_OR_KEYWORD]
    assert positional == list(sig_t)
    from torch.optim.optimizer import required

    for k in list(sig_t)[1:]:
        if sig_t[k].default is required:  # official SGDP: lr has no usable default
            assert sig_o[k].default is required, k
        else:
            assert sig_o[k].default == sig_t[k].default, k
    assert {k for k, v in sig_o.items() if v.kind is v.KEYWORD_ONLY} == (
        {"channel_axis", "project_buffer", "impl"} if name == "sgdp" else {"channel_axis", "impl"}
    )


@pytest.mark.parametrize("name", OPTS)
def test_param_groups_equal_separate_optimizers(name):
    cls, hp = OPTS[name]
    a, b = _model(), _model()
    conv_a, rest_a = list(a[0].parameters()), [p for m in a[1:] for p in m.parameters()]
    opt = cls([{"params": conv_a, "lr": hp["lr"] / 3, "wd_ratio": 0.5}, {"params": rest_a}], **hp)
    conv_b, rest_b = list(b[0].parameters()), [p for m in b[1:] for p in m.parameters()]
    opt1 = cls(conv_b, **{**hp, "lr": hp["lr"] / 3, "wd_ratio": 0.5})
    opt2 = cls(rest_b, **hp)
    for t in range(4):
        for model, opts in ((a, [opt]), (b, [opt1, opt2])):
            x, y = _batch(t)
            for o in opts:
                o.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            for o in opts:
                o.step()
    assert _same(a, b)


@pytest.mark.parametrize("name", OPTS)
def test_closure_is_called_once_and_its_loss_returned(name):
    cls, hp = OPTS[name]
    model = _model()
    opt = cls(model.parameters(), **hp)
    calls = []

    def closure():
        opt.zero_grad()
        x, y = _batch(0)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        calls.append(loss)
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    loss = opt.step(closure)
    assert len(calls) == 1 and loss is calls[0]
    assert loss.grad_fn is not None  # evaluated with grad enabled inside a no_grad step
    assert not any(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("name", OPTS)
def test_none_grads_are_skipped_and_zero_grad_clears(name):
    cls, hp = OPTS[name]
    a = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = cls([a, b], **hp)
    before = b.detach().clone()
    a.grad = torch.randn_like(a)
    opt.step()
    assert torch.equal(b, before) and len(opt.state[b]) == 0
    opt.zero_grad()
    assert a.grad is None


@pytest.mark.parametrize("name", OPTS)
def test_scheduler_and_tensor_lr_equal_float_lr(name):
    cls, hp = OPTS[name]
    a, b = _model(), _model()
    opt_a = cls(a.parameters(), **hp)
    opt_b = cls(b.parameters(), **{**hp, "lr": torch.tensor(hp["lr"])})
    sch_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=2, gamma=0.5)
    sch_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=2, gamma=0.5)
    _train(a, opt_a, 5, scheduler=sch_a)
    _train(b, opt_b, 5, scheduler=sch_b)
    assert opt_a.param_groups[0]["lr"] == hp["lr"] * 0.25  # halved after steps 2 and 4
    assert isinstance(opt_b.param_groups[0]["lr"], torch.Tensor)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        # float64 lr vs a float32 lr tensor (torch.tensor's default dtype): lr rounded to float32
        assert rel_err(q.detach().numpy(), p.detach().numpy()) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("name", OPTS)
def test_state_dict_resume_is_bit_identical(name, dtype):
    cls, hp = OPTS[name]
    a, b = _model(dtype=dtype), _model(dtype=dtype)
    opt_a = cls(a.parameters(), **hp)
    _train(a, opt_a, 6)

    opt_b = cls(b.parameters(), **hp)
    _train(b, opt_b, 3)
    saved = copy.deepcopy(opt_b.state_dict())
    model_state = copy.deepcopy(b.state_dict())
    c = _model(seed=5, dtype=dtype)
    c.load_state_dict(model_state)
    opt_c = cls(c.parameters(), **hp)
    opt_c.load_state_dict(saved)
    if dtype == torch.float16:  # D9: moments stay float32 through save and load
        assert all(
            s[k].dtype == torch.float32 for s in opt_c.state.values() for k in s if k != "step"
        )
    _train(c, opt_c, 3, start=3)
    assert _same(a, c)


@pytest.mark.parametrize("name", OPTS)
def test_loads_official_state_dict(name):
    """A state dict of PyPI adamp 0.3.0 (int step, key ``momentum`` for SGDP) resumes here as
    the official optimizer would continue (float64, rel <= 1e-12; SGDP with project_buffer).

    Fixed gradients (not a model's), so that the comparison is not amplified by training."""
    cls, hp = OPTS[name]
    official = {"adamp": adamp.AdamP, "sgdp": adamp.SGDP}[name]
    gen = torch.Generator().manual_seed(3)
    shapes = [(6, 3, 2, 2), (6,), (4, 5)]
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(6)]
    a = [torch.nn.Parameter(x.clone()) for x in init]
    opt_a = official(a, **hp)

    def step(params, opt, t):
        for p, g in zip(params, grads[t], strict=True):
            p.grad = g.clone()
        opt.step()

    for t in range(3):
        step(a, opt_a, t)
    b = [torch.nn.Parameter(x.detach().clone()) for x in a]
    opt_b = cls(b, **hp)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    if name == "sgdp":  # the official dict has no such key: ask for the official behaviour
        assert opt_b.param_groups[0]["project_buffer"] is False
        opt_b.param_groups[0]["project_buffer"] = True
    else:
        assert all(isinstance(s["step"], torch.Tensor) for s in opt_b.state.values())
    for t in range(3, 6):
        step(a, opt_a, t)
        step(b, opt_b, t)
    for p, q in zip(a, b, strict=True):
        assert rel_err(q.detach().numpy(), p.detach().numpy()) <= REL_TOL[torch.float64]


@pytest.mark.parametrize("name", OPTS)
def test_grad_scaler_step(name):
    """A real scaled step: with a power-of-two scale, unscaling is exact, so the parameters
    equal an unscaled step bit for bit; a step with an inf gradient is skipped."""
    cls, hp = OPTS[name]
    a, b = _model(dtype=torch.float32), _model(dtype=torch.float32)
    opt_a, opt_b = cls(a.parameters(), **hp), cls(b.parameters(), **hp)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for t in range(3):
        x, y = _batch(t, torch.float32)
        opt_a.zero_grad()
        torch.nn.functional.cross_entropy(a(x), y).backward()
        opt_a.step()
        opt_b.zero_grad()
        scaler.scale(torch.nn.functional.cross_entropy(b(x), y)).backward()
        scaler.step(opt_b)
        scaler.update()
    assert _same(a, b)
    before = [p.detach().clone() for p in b.parameters()]
    opt_b.zero_grad()
    scaler.scale(b(torch.full((1, 3, 4, 4), float("inf"))).sum()).backward()
    scaler.step(opt_b)
    assert all(torch.equal(p, q) for p, q in zip(b.parameters(), before, strict=True))


BAD = [
    # (optimizer, kwargs, error, message regex)
    ("adamp", dict(lr=-1.0), ValueError, r"lr must be >= 0"),
    ("adamp", dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be in \[0, 1\)"),
    ("adamp", dict(eps=0.0), ValueError, r"eps must be > 0"),
    ("adamp", dict(weight_decay=-0.1), ValueError, r"weight_decay must be >= 0"),
    ("adamp", dict(wd_ratio=1.5), ValueError, r"wd_ratio must be in \[0, 1\]"),
    ("adamp", dict(delta=float("nan")), ValueError, r"delta must be >= 0"),
    ("adamp", dict(channel_axis=2), ValueError, r"channel_axis must be in \[-2, 2\)"),
    ("sgdp", dict(lr=0.1, momentum=1.0), ValueError, r"momentum must be in \[0, 1\)"),
    ("sgdp", dict(lr=0.1, nesterov=True), ValueError, r"nesterov=True requires momentum > 0"),
    ("sgdp", dict(lr=0.1, project_buffer="yes"), ValueError, r"project_buffer must be True"),
    ("sgdp", dict(lr=0.1, channel_axis=1.5), ValueError, r"channel_axis must be an integer"),
]


@pytest.mark.parametrize("name,kwargs,error,match", BAD)
def test_bad_hyperparameters_raise_at_construction_and_add_param_group(name, kwargs, error, match):
    cls = OPTS[name][0]
    base = {"lr": 0.1} if name == "sgdp" else {}
    with pytest.raises(error, match=match):
        cls([torch.nn.Parameter(torch.ones(2, 3))], **{**base, **kwargs})
    opt = cls([torch.nn.Parameter(torch.ones(2, 3))], **base)
    with pytest.raises(error, match=match):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2, 3))], **kwargs})
    assert len(opt.param_groups) == 1  # the bad group was not kept


@pytest.mark.parametrize("name", OPTS)
def test_complex_and_integer_params_are_rejected(name):
    cls, hp = OPTS[name]
    with pytest.raises(ValueError, match="complex parameters"):
        cls([torch.nn.Parameter(torch.ones(2, 2, dtype=torch.complex64))], **hp)
    with pytest.raises(ValueError, match="floating-point parameters"):
        cls([torch.ones(2, 2, dtype=torch.int64)], **hp)


@pytest.mark.parametrize("name", OPTS)
def test_error_in_step_leaves_everything_untouched(name):
    """A sparse gradient on the last parameter: raised before any parameter or state moves."""
    cls, hp = OPTS[name]
    model = _model()
    emb = torch.nn.Embedding(4, 3, sparse=True).double()
    opt = cls([*model.parameters(), *emb.parameters()], **hp)
    _train(model, opt, 1)
    before = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    x, y = _batch(1)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    after = opt.state_dict()
    for k, st in state["state"].items():
        assert all(
            torch.equal(torch.as_tensor(v), torch.as_tensor(after["state"][k][n]))
            for n, v in st.items()
        )


@pytest.mark.parametrize("name", OPTS)
def test_fsdp1_flat_params_warn(name):
    """FSDP1 marks its flattened parameters with ``_fsdp_flattened`` (torch's own helper)."""
    from torch.distributed.fsdp._common_utils import _set_fsdp_flattened

    cls, hp = OPTS[name]
    flat = torch.nn.Parameter(torch.ones(12))
    _set_fsdp_flattened(flat)
    with pytest.warns(UserWarning, match="FSDP1 flattened 1-D parameter"):
        cls([flat], **hp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls([torch.nn.Parameter(torch.ones(12))], **hp)


def test_view_counter_counts_on_device_and_reports_shares():
    """A weight whose gradient is orthogonal to every row fires the channel view (P3), a bias
    is never tested (D4); the counter's shares say so."""
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = AdamP([w, b], lr=1e-3)
    counter = ViewCounter(opt)
    for _ in range(3):
        w.grad = torch.tensor([[4.0, -3.0], [0.0, 2.0]], dtype=torch.float64)  # <g_i, w_i> = 0
        b.grad = torch.ones(2, dtype=torch.float64)
        opt.step()
    assert opt.last_views[w].dtype == torch.int8 and opt.last_views[w].dim() == 0
    shares = counter.shares({"w": w, "b": b})
    assert shares["w"]["channel"] == 1.0 and shares["w"]["steps"] == 3
    assert shares["b"]["none"] == 1.0 and shares["b"]["projected"] == 0.0
    counter.remove()
    opt.step()
    assert counter.counts({"w": w})["w"]["channel"] == 3  # no longer counting
    assert opt.track_views is False


@pytest.mark.parametrize("name", OPTS)
def test_zero_size_and_scalar_params(name):
    """D4: zero-size tensors have nothing to update; 0-d and 1-D ones are never projected."""
    cls, hp = OPTS[name]
    ps = [torch.nn.Parameter(torch.ones(s, dtype=torch.float64)) for s in [(0, 3), (3, 0), ()]]
    opt = cls(ps, **hp)
    opt.track_views = True
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    assert [int(opt.last_views[p]) for p in ps] == [0, 0, 0]
    assert ps[2].item() < 1.0  # the scalar moved against its gradient
