"""Two-process worker: whole vs split solver vectors (shard_vectors=True) on the same operator, float64 and float32."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from worker_core import problem_in, start_two

from hf_subspace import HessianOperator, SubspaceBasis, top_eigenpairs
from hf_subspace.metrics import effective_learning_rates
from hf_subspace.operator import MatrixOperator
from hf_subspace.subspace import projected_update_, sparse_coefficients


def _random_like(params: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params]


def _basis_results(whole: SubspaceBasis, split: SubspaceBasis, op: HessianOperator, grads: tuple) -> dict:
    """Every basis operation on the same V, whole and split (split results are this rank's rows or scalars)."""
    params = op.params
    delta = _random_like(params, 11)
    out: dict = {}
    for name, basis, grad in (("whole", whole, grads[0]), ("split", split, grads[1])):
        res: dict = {
            "chi": basis.dominant_fraction(grad),
            "bulk": basis.bulk_fraction(grad),
            "chi_list": basis.dominant_fraction(delta),
            "coeffs": basis.coefficients(delta),
            "sparse": sparse_coefficients(basis, params, [None, *delta[1:]]),
            "rates": effective_learning_rates(basis, delta, grad),
            "project_bulk": basis.project_bulk(delta),
        }
        dom = [d.clone() for d in delta]
        basis.project_dominant_(dom)
        res["project_dominant_"] = dom
        for mode in ("dominant", "bulk"):
            old = [p.detach().clone() for p in params]
            new = [o + d for o, d in zip(old, delta)]
            d = [t.clone() for t in delta]
            projected_update_(new, old, d, basis, mode)
            res[f"update_{mode}"] = (new, d)
        out[name] = res
    return out


class _SplitDiagonal:
    """``diag(lam)`` on vectors split in two row halves across the processes (an eigenproblem with a known answer)."""

    is_distributed = True
    shards_vectors = True

    def __init__(self, lam: torch.Tensor, rank: int) -> None:
        self.dim, self.dtype, self.device = lam.numel(), lam.dtype, lam.device
        half = (self.dim + 1) // 2
        self.row_start = rank * half
        self.local_dim = min(half, self.dim - self.row_start)
        self.local_rows = slice(self.row_start, self.row_start + self.local_dim)
        self.lam = lam[self.local_rows]

    def matmat(self, block: torch.Tensor) -> torch.Tensor:
        return self.lam[:, None] * block

    def reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor


def _lock_in_results(rank: int) -> tuple:
    """The check's lock-in (a start without e_3 misses 40): whole vectors in one process vs split ones."""
    top = torch.tensor([100.0, 60.0, 40.0, 20.0, 15.0, 12.0, 11.0], dtype=torch.float64)
    lam = torch.cat([top, 3.0 * torch.rand(493, generator=torch.Generator().manual_seed(0), dtype=torch.float64)])
    start = torch.ones(500, dtype=torch.float64)
    start[2] = 0.0
    split = _SplitDiagonal(lam, rank)
    whole = top_eigenpairs(MatrixOperator(torch.diag(lam)), 5, init=start[:, None], method="lanczos")
    part = top_eigenpairs(split, 5, init=start[split.local_rows, None], method="lanczos")
    return (whole.eigenvalues, whole.eigenvectors, whole.num_matvecs), (
        part.eigenvalues,
        part.eigenvectors,
        part.num_matvecs,
    )


def main(out_dir: str) -> None:
    world, rank = start_two()
    results: dict = {"world": world}
    for dtype in (torch.float64, torch.float32):
        model, batches = problem_in(dtype)
        shard = batches[rank::world]
        whole = HessianOperator(model, shard)
        split = HessianOperator(model, shard, shard_vectors=True, columns_per_pass=2)
        rows = slice(split.row_start, split.row_start + split.local_dim)
        assert split.dim == whole.dim and split.local_dim < whole.dim
        block = torch.randn(whole.dim, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
        r: dict = {"rows": (rows.start, rows.stop)}
        r["hv"] = (whole.matmat(block), split.matmat(block[rows]))
        grads = (whole.loss_and_gradient()[1], split.loss_and_gradient()[1])
        r["grad"] = grads
        tol = 1e-10 if dtype == torch.float64 else None
        for method in ("lanczos", "lobpcg"):
            a = top_eigenpairs(whole, 4, method=method, seed=3, tol=tol)
            b = top_eigenpairs(split, 4, method=method, seed=3, tol=tol)
            r[method] = ((a.eigenvalues, a.eigenvectors), (b.eigenvalues, b.eigenvectors))
        ref = r["lanczos"][0][1]
        a = top_eigenpairs(whole, 4, init=ref, tol=tol)
        b = top_eigenpairs(split, 4, init=ref[rows], tol=tol)
        r["warm"] = ((a.eigenvalues, a.eigenvectors), (b.eigenvalues, b.eigenvectors))
        vectors = r["lanczos"][0][1]
        r["basis"] = _basis_results(SubspaceBasis(vectors), SubspaceBasis(vectors[rows], rows=split.rows), whole, grads)
        other = SubspaceBasis(r["lobpcg"][0][1])
        r["overlap"] = (
            SubspaceBasis(vectors).overlap(other),
            SubspaceBasis(vectors[rows], rows=split.rows).overlap(SubspaceBasis(other.vectors[rows], rows=split.rows)),
        )
        r["distance"] = (
            SubspaceBasis(vectors).distance(other),
            SubspaceBasis(vectors[rows], rows=split.rows).distance(SubspaceBasis(other.vectors[rows], rows=split.rows)),
        )
        results[str(dtype)] = r
    results["lock_in"] = _lock_in_results(rank)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
