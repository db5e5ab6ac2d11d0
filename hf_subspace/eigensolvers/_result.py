"""The value every eigensolver returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["EigenResult"]


@dataclass
class EigenResult:
    r"""Top-:math:`k` eigenpairs of a symmetric operator :math:`H`, with what it cost to get them.

    Attributes:
        eigenvalues: ``[k]`` estimates :math:`\lambda_1 \ge \dots \ge \lambda_k`, sorted by algebraic value
            (largest first; the operator may be indefinite, so these are not the largest in magnitude).
        eigenvectors: ``[d, k]`` orthonormal columns :math:`v_i`, same dtype and device as the operator. The sign of
            each column is fixed so that its entry of largest magnitude is positive.
        residuals: ``[k]`` residual norms :math:`\lVert H v_i - \lambda_i v_i \rVert_2` (for ``"lanczos"`` the
            Lanczos estimate :math:`|\beta_j s_{j,i}|`, which equals the true residual in exact arithmetic).
        num_matvecs: operator applications used; a block of :math:`m` columns counts :math:`m`, including any
            residual check.
        converged: whether the method's stopping test passed: the residual test
            :math:`\max_i r_i \le \mathrm{tol} \cdot \max_i |\lambda_i|` (``lobpcg``, ``eigsh``), or for ``lanczos`` a
            residual test per pair and a final check that no eigenvalue above :math:`\lambda_k` was missed.
        iterations: iterations of the method (block iterations for LOBPCG, Lanczos steps, operator calls of ARPACK).
        method: the method that produced the result (``"lobpcg"``, ``"lanczos"`` or ``"eigsh"``).
        seconds: wall-clock time of the solve.
        num_calls: number of ``matmat`` calls (a block counts once): the number of passes over the data, which is
            what a block method saves.
        eigengap: :math:`\theta_k - \theta_{k+1}`, the gap between the ``k``-th eigenvalue and the method's estimate
            of the next one (its ``(k+1)``-th Ritz value: Lanczos' tridiagonal, LOBPCG's first buffer column), or
            ``None`` where the method has no such estimate (``"eigsh"``, LOBPCG with ``buffer=0``, and a LOBPCG
            solve that stopped at iteration 0 while its buffer column was still random, e.g. a warm start with the
            exact top-``k`` eigenvectors: ``None`` then means "not known", not "no gap"). A Ritz value
            never exceeds the eigenvalue of the same rank, so this is an optimistic (upper) estimate of
            :math:`\lambda_k - \lambda_{k+1}`, exact up to the residuals as the next pair converges. Lanczos, a
            single-vector Krylov method, sees only one vector of a multiple eigenvalue; its final deflated check
            (a fresh random vector) sees the others, and its gap :math:`\theta_k - \max(\theta_{k+1}, \mu)` is about 0
            at a tie :math:`\lambda_k = \lambda_{k+1}`. When the gap is within
            the residuals, :func:`~hf_subspace.eigensolvers.top_eigenpairs` warns (``UserWarning``).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    num_matvecs: int
    converged: bool
    iterations: int
    method: str
    seconds: float
    num_calls: int = 0
    eigengap: float | None = None

    @property
    def k(self) -> int:
        """Number of eigenpairs."""
        return int(self.eigenvalues.shape[0])

    def __repr__(self) -> str:
        values = ", ".join(f"{v:.4g}" for v in self.eigenvalues.tolist()[:6])
        more = ", ..." if self.k > 6 else ""
        return (
            f"EigenResult(method={self.method!r}, k={self.k}, eigenvalues=[{values}{more}], "
            f"max_residual={float(self.residuals.max()) if self.k else 0.0:.3g}, num_matvecs={self.num_matvecs}, "
            f"num_calls={self.num_calls}, eigengap={self.eigengap if self.eigengap is None else f'{self.eigengap:.3g}'}, "
            f"iterations={self.iterations}, converged={self.converged}, seconds={self.seconds:.3g})"
        )
