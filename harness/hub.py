"""Is the Hugging Face hub reachable, and does a name mean the hub: checked fast, so nothing hangs offline."""

from __future__ import annotations

import os
import re
import socket
import threading
import urllib.request
from urllib.parse import urlsplit

from harness.errors import HarnessError

OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
"""Environment variables that, when truthy, mean: never touch the network."""

PROBE_TIMEOUT_S = 2.5
"""How long the reachability probe may take, name resolution included."""

_TRUE_VALUES = {"1", "on", "yes", "true"}
_DEFAULT_ENDPOINT = "https://huggingface.co"

# One segment, or "owner/name"; each starts with a letter or digit, then letters, digits, "_", "-", ".".
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
# A single segment with one of these endings is a file name the user meant locally, not a hub id.
_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".txt", ".gz", ".zst", ".bz2", ".xz")

_probe_lock = threading.Lock()
_probe_results: dict[tuple[str, int], bool] = {}


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _TRUE_VALUES


def offline_by_env() -> bool:
    """True when HF_HUB_OFFLINE, HF_DATASETS_OFFLINE or TRANSFORMERS_OFFLINE is set to a true value."""
    return any(_truthy(os.environ.get(var)) for var in OFFLINE_ENV_VARS)


def _probe_target() -> tuple[str, int]:
    """Host and port a connection to the hub goes to first: the endpoint itself, or the proxy in front of it."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT)
    scheme = endpoint.scheme or "https"
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if scheme == "http" else 443)
    proxy = urllib.request.getproxies_environment().get(scheme) or urllib.request.getproxies_environment().get("all")
    if proxy and not urllib.request.proxy_bypass_environment(host):
        parsed = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    return host, port


def _reachable(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to host:port opens within timeout seconds (name lookup included)."""
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores socket timeouts, and a dead resolver can stall for long: bound the whole probe.
    thread = threading.Thread(target=connect, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result) and result[0]


def hub_offline() -> bool:
    """True when an offline variable is set, or the hub endpoint (HF_ENDPOINT) did not answer a quick probe."""
    if offline_by_env():
        return True
    target = _probe_target()
    with _probe_lock:
        if target not in _probe_results:
            _probe_results[target] = not _reachable(*target, timeout=PROBE_TIMEOUT_S)
        return _probe_results[target]


def looks_like_hub_id(name: str) -> bool:
    """True when name reads as a hub repo id ("owner/name" or "name") and is not an existing local path."""
    if not isinstance(name, str) or not name or os.path.exists(os.path.expanduser(name)):
        return False
    if not _HUB_ID.match(name) or ".." in name or "--" in name or name.endswith((".", "-")):
        return False
    return "/" in name or not name.lower().endswith(_FILE_SUFFIXES)


def offline_error(kind: str, name: str, fix: str) -> HarnessError:
    """The one-line error for a hub name asked for while the hub is offline."""
    return HarnessError(
        f"{kind} '{name}' is not a local path and the Hugging Face hub is offline "
        f"(HF_HUB_OFFLINE=1 / no network); {fix}"
    )


def require_online(kind: str, name: str, fix: str) -> None:
    """Raise a one-line HarnessError when the hub is offline, before anything can wait on the network."""
    if hub_offline():
        raise offline_error(kind, name, fix)
