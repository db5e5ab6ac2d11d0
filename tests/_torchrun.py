"""Two real processes under ``torchrun --standalone --nproc_per_node 2`` (gloo on CPU), for the distributed tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

__all__ = ["GLOO_TEARDOWN_ABORT", "torchrun_two"]

# gloo's C++ teardown once aborted a finished rank on a loaded CI machine (std::terminate on a joinable thread); the
# workers' results were complete. Only that message earns one relaunch: any other failure fails the test at once.
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def torchrun_two(
    argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m torch.distributed.run --standalone --nproc_per_node 2 *argv``; return the finished process.

    ``env`` entries are added to ``os.environ``. Relaunched once when (and only when) it died of
    :data:`GLOO_TEARDOWN_ABORT`.

    Raises:
        AssertionError: when it still failed, with the tails of its stdout and stderr.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *argv]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and GLOO_TEARDOWN_ABORT in proc.stderr:
        proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc
