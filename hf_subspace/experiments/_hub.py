"""Whether the Hugging Face Hub can be reached, decided once per process; offline mode when it cannot.

Without ``HF_HUB_OFFLINE`` set, every Hub call of ``transformers`` / ``datasets`` / ``evaluate`` on a machine
without network retries with back-off (about 25 s per file: 48 s for the SST-2 recipe's tokenizer alone) before it
fails. The runner therefore asks once, before its first Hub call, with one TCP connection to the Hub's host
(``HF_ENDPOINT``, default ``huggingface.co:443``) and a short timeout (:data:`HUB_PROBE_TIMEOUT_S`). If that fails,
the process switches to offline mode exactly as ``HF_HUB_OFFLINE=1`` would have (cached files and the recipes' local
fallbacks only) and says so in one line. With ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) no probe is made.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import urllib.parse

__all__ = ["HUB_PROBE_TIMEOUT_S", "ensure_hub_or_offline", "hub_endpoint", "hub_offline", "hub_reachable"]

logger = logging.getLogger("hf_subspace")

HUB_PROBE_TIMEOUT_S = 3.0
"""Seconds the connectivity probe waits for a TCP connection to the Hub (name resolution included)."""

_TRUE = {"1", "true", "yes", "on"}
_state: dict[str, bool] = {}


def hub_offline() -> bool:
    """Whether offline mode is requested: ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set to a true value."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> tuple[str, int]:
    """``(host, port)`` of the Hub: ``HF_ENDPOINT`` (default ``https://huggingface.co``)."""
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def _can_connect(host: str, port: int, timeout: float) -> bool:
    """One TCP connection attempt, bounded by ``timeout`` seconds including name resolution (run in a thread, since
    ``getaddrinfo`` itself takes no timeout)."""
    outcome: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, name="hf-subspace-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hub answers a TCP connection within ``timeout`` s; ``False`` in offline mode without probing.

    The answer is computed once per process (one connection attempt) and then reused.
    """
    if hub_offline():
        return False
    if "reachable" not in _state:
        _state["reachable"] = _can_connect(*hub_endpoint(), timeout)
    return _state["reachable"]


def _switch_to_offline() -> None:
    """Offline mode for this process and its children, as if ``HF_HUB_OFFLINE=1`` had been set at start.

    The libraries read the variable at import, so their module-level flags are set as well.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_EVALUATE_OFFLINE"] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True
        datasets_config.HF_DATASETS_OFFLINE = True
    evaluate_config = sys.modules.get("evaluate.config")
    if evaluate_config is not None:
        evaluate_config.HF_EVALUATE_OFFLINE = True


def ensure_hub_or_offline() -> bool:
    """Call before the first Hub access: ``True`` when the Hub can be used.

    In offline mode returns ``False`` at once. Otherwise probes the Hub once (:func:`hub_reachable`); when it is
    unreachable, switches the process to offline mode (:func:`_switch_to_offline`), logs one warning line that says
    so and names ``HF_HUB_OFFLINE``, and returns ``False``.
    """
    if hub_offline():
        return False
    if hub_reachable():
        return True
    host, port = hub_endpoint()
    _switch_to_offline()
    logger.warning(
        "hf-subspace: the Hugging Face Hub (%s:%d) is unreachable (no connection within %g s): working offline with "
        "cached files and local fallbacks; set HF_HUB_OFFLINE=1 to skip this check.",
        host,
        port,
        HUB_PROBE_TIMEOUT_S,
    )
    return False
