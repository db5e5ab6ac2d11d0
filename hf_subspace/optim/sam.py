r"""Sharpness-aware minimisation (SAM) wrapping an arbitrary base optimizer.

Implements the two-pass update of Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
Generalization" (ICLR 2021), with the optional scale-invariant ASAM variant of Kwon et al. (ICML 2021).

.. math::
    \begin{aligned}
        &g = \nabla L_B(\theta_t)                                   \\
        &\varepsilon = \rho \, \frac{g}{\lVert g \rVert_2}
            \quad\text{or, adaptive:}\quad
            \varepsilon = \rho \, \frac{T^2 g}{\lVert T g \rVert_2},\; T = \operatorname{diag}(\lvert\theta_t\rvert) \\
        &g_{\mathrm{SAM}} = \nabla L_B(\theta_t + \varepsilon)      \\
        &\theta_{t+1} = \texttt{base\_step}(\theta_t, g_{\mathrm{SAM}})
    \end{aligned}

The norm runs over *all* parameters of *all* parameter groups; a group's own ``rho`` / ``adaptive`` values scale and
shape its share of :math:`\varepsilon`. A zero gradient gives :math:`\varepsilon = 0` (no ``NaN``).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["SAM"]

_PERTURBATION_KEY = "e_w"
_SAM_STATE_KEY = "sam_state"


class SAM(Optimizer):
    r"""Sharpness-aware minimisation around a base optimizer.

    One SAM update needs two gradients. Either pass a closure that computes the loss and calls ``backward()``::

        optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        def closure():
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss
        loss = optimizer.step(closure)

    or drive the two passes by hand (what a trainer that calls ``optimizer.step()`` without a closure does)::

        loss_fn(model(x), y).backward()
        optimizer.first_step(zero_grad=True)     # θ ← θ + ε
        loss_fn(model(x), y).backward()
        optimizer.step()                         # θ ← θ − ε, then the base step (same as second_step())

    ``param_groups`` is the *same list* as ``base_optimizer.param_groups``, so learning-rate schedulers attached to the
    SAM object drive the base optimizer. ``state_dict()`` is the base optimizer's state dict plus the pending
    perturbation (if any) under ``"sam_state"``.

    Args:
        params: iterable of parameters or parameter-group dicts.
        base_optimizer: optimizer class, or any callable ``(param_groups, **base_kwargs) -> Optimizer``.
        rho: neighbourhood radius :math:`\rho \ge 0` (``0`` reduces to the base optimizer, at twice the cost).
        adaptive: use the scale-invariant ASAM perturbation with :math:`T = |\theta|`.
        **base_kwargs: forwarded to ``base_optimizer`` (``lr``, ``momentum``, ``weight_decay``, ...).

    Raises:
        ValueError: if ``rho`` is negative (also for a parameter group's own ``rho``).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer] | Callable[..., Optimizer] = torch.optim.SGD,
        rho: float = 0.05,
        adaptive: bool = False,
        **base_kwargs: Any,
    ) -> None:
        _check_rho(rho)
        defaults = dict(rho=rho, adaptive=adaptive, **base_kwargs)
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_rho(group["rho"])
        self.base_optimizer: Optimizer = base_optimizer(self.param_groups, **base_kwargs)
        # One list of group dicts, shared by both objects.
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update({k: v for k, v in self.base_optimizer.defaults.items() if k not in self.defaults})

    # ------------------------------------------------------------------ the two passes

    @property
    def is_perturbed(self) -> bool:
        """Whether :meth:`first_step` moved the parameters to θ + ε and they have not been restored yet."""
        return any(_PERTURBATION_KEY in s for s in self.state.values())

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor | None:
        """Global 2-norm of ``g`` (or of ``|θ| g`` for adaptive groups) over every parameter with a gradient."""
        norms = []
        device = None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if device is None:
                    device = p.device
                g = p.grad * p.abs() if group["adaptive"] else p.grad
                # Accumulate half-precision gradients in float32 (no overflow of the sum of squares).
                norms.append(torch.linalg.vector_norm(g, dtype=torch.promote_types(g.dtype, torch.float32)))
        if not norms:
            return None
        dtype = functools.reduce(torch.promote_types, (n.dtype for n in norms))
        return torch.linalg.vector_norm(torch.stack([n.to(device=device, dtype=dtype) for n in norms]))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Ascent step: store ε for every parameter with a gradient and move it to θ + ε.

        Uses the parameters' current ``.grad`` (the raw minibatch gradient). If the parameters are already perturbed,
        they are restored first, so calling this twice never stacks perturbations.

        Args:
            zero_grad: clear the gradients afterwards, ready for the backward pass at θ + ε.
        """
        self.restore()
        norm = self._grad_norm()
        if norm is not None:
            for group in self.param_groups:
                # ρ/‖g‖, or 0 when ‖g‖ = 0 (torch.where keeps the inf of ρ/0 out of the product).
                scale = torch.where(norm > 0, group["rho"] / norm, torch.zeros_like(norm))
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    e_w = p.grad * p.square() if group["adaptive"] else p.grad.clone()
                    e_w.mul_(scale.to(device=p.device, dtype=e_w.dtype))
                    p.add_(e_w)
                    self.state[p][_PERTURBATION_KEY] = e_w
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        """Undo :meth:`first_step`: θ ← θ − ε for every stored ε, then forget ε. A no-op when not perturbed."""
        for group in self.param_groups:
            for p in group["params"]:
                e_w = self.state[p].pop(_PERTURBATION_KEY, None) if p in self.state else None
                if e_w is not None:
                    p.sub_(e_w)

    def second_step(self, zero_grad: bool = False) -> None:
        """Descent step: restore θ, then take the base optimizer's step with the gradient computed at θ + ε.

        Args:
            zero_grad: clear the gradients after the step.
        """
        self.restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimizer step.

        Args:
            closure: re-evaluates the model: computes the loss and calls ``backward()`` (and, as usual for closures,
                zeroes the gradients first, or they must be zero on entry). It is called twice, at θ and at θ + ε,
                under ``torch.enable_grad()``; the gradients are zeroed between the two calls. Without a closure the
                step is :meth:`second_step` if :meth:`first_step` was called, else a plain base step.

        Returns:
            The loss returned by the first closure call (at θ), or ``None`` without a closure.
        """
        if closure is None:
            if self.is_perturbed:
                self.second_step()
            else:
                self.base_optimizer.step()
            return None
        with torch.enable_grad():
            loss = closure()
        self.first_step(zero_grad=True)
        try:
            with torch.enable_grad():
                closure()
        except BaseException:
            self.restore()
            raise
        self.second_step()
        return loss

    # ------------------------------------------------------------------ bookkeeping

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to both SAM and the base optimizer (they share the group list)."""
        if "base_optimizer" not in self.__dict__:  # called from Optimizer.__init__
            super().add_param_group(param_group)
            return
        param_group.setdefault("rho", self.defaults["rho"])
        param_group.setdefault("adaptive", self.defaults["adaptive"])
        _check_rho(param_group["rho"])
        self.base_optimizer.add_param_group(param_group)
        self.param_groups = self.base_optimizer.param_groups

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict, plus any pending perturbation ε under ``"sam_state"``."""
        state = self.base_optimizer.state_dict()
        own = super().state_dict()["state"]
        state[_SAM_STATE_KEY] = {
            idx: {_PERTURBATION_KEY: s[_PERTURBATION_KEY]} for idx, s in own.items() if _PERTURBATION_KEY in s
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` (a plain base-optimizer state dict works too).

        A saved perturbation is loaded as it was, so :meth:`restore` / :meth:`second_step` after loading undo it; this
        assumes the model parameters were saved at the same moment (i.e. at θ + ε).
        """
        state_dict = dict(state_dict)
        sam_state = state_dict.pop(_SAM_STATE_KEY, None) or {}
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups  # load_state_dict builds new group dicts
        params = [p for group in self.param_groups for p in group["params"]]
        self.state = defaultdict(dict)
        for idx, saved in sam_state.items():
            p = params[int(idx)]
            self.state[p][_PERTURBATION_KEY] = saved[_PERTURBATION_KEY].to(device=p.device, dtype=p.dtype)

    def __repr__(self) -> str:
        return f"SAM(base_optimizer={self.base_optimizer!r})"


def _check_rho(rho: float) -> None:
    if not rho >= 0.0:
        raise ValueError(f"Invalid rho: {rho!r}; SAM's neighbourhood radius rho must be >= 0.")
