r"""Hessian-vector products by central differences of the gradient, for models without double backward.

.. math::

    Hv \approx \frac{\nabla L(\theta + \varepsilon v) - \nabla L(\theta - \varepsilon v)}{2 \varepsilon},
    \qquad \varepsilon = \frac{u^{1/3} \, (1 + \lVert \theta \rVert_2)}{\lVert v \rVert_2},

with :math:`u` the unit roundoff of the parameters' dtype. The truncation error of the central difference is
:math:`O(\varepsilon^2 \lVert v \rVert^3 \lVert \nabla^3 L \rVert)` and the rounding error of the two gradients
:math:`O(u \lVert \nabla L \rVert / (\varepsilon \lVert v \rVert))`; the two balance at a step of :math:`u^{1/3}`
relative to the scale of :math:`\theta`, which leaves a relative error of about :math:`u^{2/3}`: ~2e-5 in float32 and
~4e-11 in float64 (measured against the exact product in ``docs/performance.md``). Only first-order gradients are
needed, so the engine's own backward suffices (fused attention kernels, CTC losses, FSDP2). The parameters are copied
before the first perturbation and copied back after each product, so :math:`\theta` is restored bitwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["difference_products_", "difference_steps"]


def difference_steps(
    params: Sequence[torch.Tensor],
    vectors: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[float]:
    """The step :math:`\\varepsilon_j` of each row ``j`` of ``vectors`` (``[m, d]``; 0 for a zero vector).

    ``reduce`` sums the squared norms over the processes when ``params`` and ``vectors`` are local shards.
    """
    unit = torch.finfo(params[0].dtype).eps / 2
    squares = torch.cat(
        [
            torch.stack([p.detach().double().square().sum() for p in params]).sum().reshape(1),
            vectors.double().square().sum(dim=1),
        ]
    )
    if reduce is not None:
        reduce(squares)
    theta, *norms = squares.sqrt().tolist()
    return [0.0 if n == 0.0 else unit ** (1 / 3) * (1.0 + theta) / n for n in norms]


def difference_products_(
    gradient: Callable[[], Sequence[torch.Tensor | None]],
    params: Sequence[torch.Tensor],
    saved: Sequence[torch.Tensor],
    vectors: Sequence[torch.Tensor],
    steps: Sequence[float],
    products: Sequence[torch.Tensor],
    weight: float,
) -> None:
    """``products[i][j] += weight · (g_i(θ + ε_j v_j) − g_i(θ − ε_j v_j)) / 2ε_j`` for every column ``j``.

    Args:
        gradient: the batch's gradient at the current parameters, one entry per parameter (None: no dependence).
        params: the parameters (perturbed in place, restored from ``saved`` after every column).
        saved: bitwise copies of ``params``.
        vectors: per parameter, the ``[m, *shape]`` directions.
        steps: ``ε_j`` per column (:func:`difference_steps`).
        products: per parameter, the ``[m, *shape]`` accumulators.
        weight: the batch's weight ``n_b``.
    """
    try:
        for j, step in enumerate(steps):
            if step == 0.0:
                continue
            sides = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    torch._foreach_copy_(list(params), list(saved))
                    torch._foreach_add_(list(params), [v[j] for v in vectors], alpha=sign * step)
                sides.append(gradient())
            for out, plus, minus in zip(products, *sides):
                if plus is not None and minus is not None:
                    out[j].add_(plus - minus, alpha=weight / (2 * step))
    finally:
        with torch.no_grad():
            torch._foreach_copy_(list(params), list(saved))
