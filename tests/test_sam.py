"""Tests for hf_subspace.optim.SAM."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_subspace.optim import SAM


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(12, 4, generator=g, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    return A, b


def _loss(theta: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((A @ theta - b) ** 2).mean()


def _grad(theta: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Analytic gradient of the least-squares loss."""
    return A.T @ (A @ theta - b) / A.shape[0]


def _closure(opt: torch.optim.Optimizer, theta: torch.Tensor, A: torch.Tensor, b: torch.Tensor):
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _loss(theta, A, b)
        loss.backward()
        return loss

    return closure


def _manual_step(opt: SAM, theta: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> float:
    opt.zero_grad()
    loss = _loss(theta, A, b)
    loss.backward()
    opt.first_step(zero_grad=True)
    assert opt.is_perturbed
    _loss(theta, A, b).backward()
    opt.second_step(zero_grad=True)
    assert not opt.is_perturbed
    return loss.item()


@pytest.mark.parametrize("adaptive", [False, True])
def test_one_step_matches_hand_computation(adaptive: bool) -> None:
    A, b = _problem()
    theta0 = torch.tensor([0.3, -1.2, 0.7, 2.0], dtype=torch.float64)
    theta = theta0.clone().requires_grad_(True)
    lr, rho = 0.1, 0.05
    opt = SAM([theta], torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr)
    loss = opt.step(_closure(opt, theta, A, b))

    g = _grad(theta0, A, b)
    if adaptive:
        T = theta0.abs()
        eps = rho * T**2 * g / torch.linalg.vector_norm(T * g)
    else:
        eps = rho * g / torch.linalg.vector_norm(g)
    expected = theta0 - lr * _grad(theta0 + eps, A, b)
    torch.testing.assert_close(theta.detach(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss.detach(), _loss(theta0, A, b))
    assert not opt.is_perturbed


def test_closure_and_manual_steps_agree() -> None:
    A, b = _problem(1)
    t1 = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    t2 = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    o1 = SAM([t1], torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
    o2 = SAM([t2], torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
    for _ in range(5):
        l1 = o1.step(_closure(o1, t1, A, b))
        l2 = _manual_step(o2, t2, A, b)
        assert l1.item() == l2
        assert torch.equal(t1.detach(), t2.detach())
    # step() without a closure after first_step is the second step.
    o2.zero_grad()
    _loss(t2, A, b).backward()
    o2.first_step(zero_grad=True)
    _loss(t2, A, b).backward()
    o2.step()
    o1.step(_closure(o1, t1, A, b))
    assert torch.equal(t1.detach(), t2.detach())


def test_momentum_base_optimizer_matches_hand_computation() -> None:
    A, b = _problem(2)
    theta0 = torch.tensor([1.0, 0.0, -1.0, 0.5], dtype=torch.float64)
    theta = theta0.clone().requires_grad_(True)
    lr, rho, mom = 0.05, 0.02, 0.9
    opt = SAM([theta], torch.optim.SGD, rho=rho, lr=lr, momentum=mom)
    ref, buf = theta0.clone(), None
    for _ in range(4):
        opt.step(_closure(opt, theta, A, b))
        g = _grad(ref, A, b)
        g_sam = _grad(ref + rho * g / g.norm(), A, b)
        buf = g_sam.clone() if buf is None else mom * buf + g_sam
        ref = ref - lr * buf
        torch.testing.assert_close(theta.detach(), ref, rtol=1e-12, atol=1e-12)
    assert "momentum_buffer" in opt.base_optimizer.state[theta]


def test_plain_step_without_first_step_is_base_step() -> None:
    A, b = _problem(3)
    theta0 = torch.ones(4, dtype=torch.float64)
    theta = theta0.clone().requires_grad_(True)
    opt = SAM([theta], torch.optim.SGD, rho=0.5, lr=0.1)
    _loss(theta, A, b).backward()
    opt.step()
    torch.testing.assert_close(theta.detach(), theta0 - 0.1 * _grad(theta0, A, b))


def test_zero_gradient_and_restore_are_safe() -> None:
    theta = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = SAM([theta], rho=0.1, lr=0.1)
    theta.grad = torch.zeros(2)
    opt.first_step()
    assert torch.isfinite(theta).all()
    assert torch.equal(theta.detach(), torch.tensor([1.0, 2.0]))
    opt.restore()
    opt.restore()  # idempotent
    assert not opt.is_perturbed
    # No gradient at all: nothing to perturb.
    opt.zero_grad()
    assert theta.grad is None
    opt.first_step()
    assert not opt.is_perturbed


def test_restore_is_idempotent_and_first_step_does_not_stack() -> None:
    theta0 = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    theta = theta0.clone().requires_grad_(True)
    opt = SAM([theta], rho=0.3, lr=0.1)
    theta.grad = torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64)
    opt.first_step()
    opt.first_step()  # restores first, so still one ε
    torch.testing.assert_close(theta.detach(), theta0 + 0.3 * torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64))
    opt.restore()
    opt.restore()
    torch.testing.assert_close(theta.detach(), theta0)


def test_gradient_norm_spans_all_param_groups() -> None:
    a = torch.zeros(1, requires_grad=True)
    c = torch.zeros(1, requires_grad=True)
    opt = SAM([{"params": [a]}, {"params": [c], "rho": 1.0}], rho=0.5, lr=0.1)
    a.grad = torch.tensor([3.0])
    c.grad = torch.tensor([4.0])
    opt.first_step()
    torch.testing.assert_close(a.detach(), torch.tensor([0.5 * 3 / 5]))
    torch.testing.assert_close(c.detach(), torch.tensor([1.0 * 4 / 5]))


def _make_model_and_opt(state: dict | None = None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    if state is not None:
        model.load_state_dict(state)
    opt = SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=1e-2, betas=(0.8, 0.99))
    return model, opt


def _train(model: torch.nn.Module, opt: SAM, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 3, generator=g)
        y = x.sum(1, keepdim=True)

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)


def test_state_dict_round_trip(tmp_path) -> None:
    model, opt = _make_model_and_opt()
    _train(model, opt, 3, seed=0)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    assert "state" in ckpt["opt"] and "param_groups" in ckpt["opt"]
    assert ckpt["opt"]["param_groups"][0]["rho"] == 0.05

    model2, opt2 = _make_model_and_opt()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.param_groups is opt2.base_optimizer.param_groups

    _train(model, opt, 3, seed=1)
    _train(model2, opt2, 3, seed=1)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_state_dict_keeps_pending_perturbation() -> None:
    theta0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    theta = theta0.clone().requires_grad_(True)
    opt = SAM([theta], rho=0.1, lr=0.1)
    theta.grad = torch.tensor([1.0, 0.0], dtype=torch.float64)
    opt.first_step()
    sd = copy.deepcopy(opt.state_dict())
    theta2 = theta.detach().clone().requires_grad_(True)  # saved at θ + ε
    opt2 = SAM([theta2], rho=0.1, lr=0.1)
    opt2.load_state_dict(sd)
    assert opt2.is_perturbed
    opt2.restore()
    torch.testing.assert_close(theta2.detach(), theta0)


def test_lr_scheduler_drives_base_optimizer() -> None:
    theta = torch.zeros(2, requires_grad=True)
    opt = SAM([theta], torch.optim.SGD, rho=0.05, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    for expected in (1.0, 0.5, 0.25):
        assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(expected)
        theta.grad = torch.ones(2)
        before = theta.detach().clone()
        opt.step()  # plain base step: θ ← θ − lr·g
        torch.testing.assert_close(theta.detach(), before - expected)
        sched.step()
    # Still linked after a state-dict load (which rebuilds the group dicts).
    opt.load_state_dict(opt.state_dict())
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.0625)


def test_add_param_group_reaches_base_optimizer() -> None:
    a = torch.zeros(1, requires_grad=True)
    c = torch.zeros(1, requires_grad=True)
    opt = SAM([a], rho=0.2, lr=0.1)
    opt.add_param_group({"params": [c], "lr": 0.3})
    assert len(opt.base_optimizer.param_groups) == 2
    assert opt.param_groups[1]["rho"] == 0.2 and opt.param_groups[1]["lr"] == 0.3
    with pytest.raises(ValueError, match="rho"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "rho": -1.0})


def test_rho_validation() -> None:
    with pytest.raises(ValueError, match="rho"):
        SAM([torch.zeros(1, requires_grad=True)], rho=-0.1, lr=0.1)
    with pytest.raises(ValueError, match="rho"):
        SAM([{"params": [torch.zeros(1, requires_grad=True)], "rho": -1.0}], lr=0.1)


def test_callable_base_optimizer_and_zero_grad() -> None:
    theta = torch.ones(3, requires_grad=True)
    opt = SAM([theta], lambda groups, **kw: torch.optim.SGD(groups, **kw), rho=0.1, lr=0.1)
    theta.grad = torch.ones(3)
    opt.zero_grad()
    assert theta.grad is None


def test_closure_error_restores_parameters() -> None:
    theta0 = torch.tensor([1.0, 2.0])
    theta = theta0.clone().requires_grad_(True)
    opt = SAM([theta], rho=0.1, lr=0.1)
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        opt.zero_grad()
        loss = (theta**2).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(closure)
    assert not opt.is_perturbed
    torch.testing.assert_close(theta.detach(), theta0)


def test_works_inside_accelerated_optimizer() -> None:
    accelerate = pytest.importorskip("accelerate")
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.state import AcceleratorState, GradientState

    accelerator = accelerate.Accelerator(cpu=True)
    try:
        _check_accelerated(accelerator, AcceleratedOptimizer)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _check_accelerated(accelerator, AcceleratedOptimizer) -> None:
    A, b = _problem(4)
    t1 = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    t2 = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    o1 = SAM([t1], rho=0.1, lr=0.2, momentum=0.5)
    o2 = accelerator.prepare_optimizer(SAM([t2], rho=0.1, lr=0.2, momentum=0.5))
    assert isinstance(o2, AcceleratedOptimizer)
    sched = torch.optim.lr_scheduler.LambdaLR(o2, lambda s: 1.0)
    for _ in range(3):
        o1.step(_closure(o1, t1, A, b))
        o2.step(_closure(o2, t2, A, b))
        sched.step()
        # manual two-pass through the wrapper: first_step on the inner optimizer, step() on the wrapper
        for opt, t in ((o1, t1), (o2, t2)):
            opt.zero_grad()
            _loss(t, A, b).backward()
            inner = opt.optimizer if isinstance(opt, AcceleratedOptimizer) else opt
            inner.first_step(zero_grad=True)
            _loss(t, A, b).backward()
            opt.step()
        assert torch.equal(t1.detach(), t2.detach())
    assert o2.param_groups is o2.optimizer.base_optimizer.param_groups
    o2.load_state_dict(o2.state_dict())
    assert "momentum_buffer" in o2.optimizer.base_optimizer.state[t2]
