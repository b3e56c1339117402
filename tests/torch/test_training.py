"""End-to-end: a small BatchNorm CNN trained on CPU, and torch.compile of the step.

Expected behaviour, from the paper's argument (Heo et al. 2021, section 3): a convolution
followed by BatchNorm is scale-invariant, so its gradient is orthogonal to each output channel
of its weight and the channel view fires on (nearly) every step; the final linear layer is not
scale-invariant, so it is projected only when its gradient happens to be nearly orthogonal to
it, about the chance rate P(|N(0,1)| < delta) = 8% for delta = 0.1.
"""

from __future__ import annotations

import pytest
import torch
from adamp_torch import SGDP, AdamP, ViewCounter

STEPS = 300


def _data(n: int = 512):
    g = torch.Generator().manual_seed(0)
    templates = torch.randn(10, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    x = templates[y] + 0.8 * torch.randn(n, 1, 8, 8, generator=g)
    return x, y


def _cnn() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(32),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    )


@pytest.mark.parametrize(
    "cls,hp",
    [(AdamP, dict(lr=3e-3, weight_decay=1e-2)), (SGDP, dict(lr=0.05, momentum=0.9, nesterov=True))],
    ids=["adamp", "sgdp"],
)
def test_bn_cnn_trains_and_projects_conv_weights(cls, hp):
    x, y = _data()
    model = _cnn()
    opt = cls(model.parameters(), **hp)
    counter = ViewCounter(opt)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        idx = torch.randint(0, x.shape[0], (64,), generator=g)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.5 * first, (first, last)
    shares = counter.shares(
        {"conv1": model[0].weight, "conv2": model[3].weight, "fc": model[8].weight}
    )
    assert shares["conv1"]["projected"] >= 0.95, shares["conv1"]
    assert shares["conv2"]["projected"] >= 0.95, shares["conv2"]
    # chance rate ~8% (layer view, 320 weights); 300 steps put 3 sigma at about +-5%
    assert shares["fc"]["projected"] <= 0.25, shares["fc"]


def test_compiled_step_matches_eager():
    """torch.compile(opt.step) runs on CPU in one graph (fullgraph: no host read breaks it) and
    follows the eager step to float32 rounding."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    shapes = [(8, 3, 3, 3), (8,), (5, 8)]
    ps = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    eager = AdamP(ps, lr=1e-2, weight_decay=0.1)
    compiled_opt = AdamP(qs, lr=1e-2, weight_decay=0.1)
    step = torch.compile(compiled_opt.step, fullgraph=True)
    for _ in range(3):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(ps, qs, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        eager.step()
        step()
    for p, q in zip(ps, qs, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "cls,hp",
    [(AdamP, dict(lr=1e-3, weight_decay=0.1)), (SGDP, dict(lr=0.1, momentum=0.9))],
    ids=["adamp", "sgdp"],
)
def test_cuda_step_reads_nothing_on_the_host(cls, hp):
    """With torch.cuda.set_sync_debug_mode("error") any device-to-host synchronisation raises."""
    model = _cnn().cuda()
    opt = cls(model.parameters(), **hp)
    x, y = (t.cuda() for t in _data(64))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):  # the first step also builds the state and the cached layouts
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
