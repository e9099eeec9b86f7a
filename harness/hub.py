"""Is the Hugging Face hub reachable, and does a name mean the hub: checked fast, so nothing hangs offline."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import socket
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
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


def offline_reason() -> str | None:
    """Why the hub counts as offline, in words for an error message (None when it is reachable)."""
    for var in OFFLINE_ENV_VARS:
        if _truthy(os.environ.get(var)):
            return f"{var}={os.environ[var]} is set"
    if hub_offline():
        host, port = _probe_target()
        return f"the Hugging Face hub ({host}:{port}) did not answer within {PROBE_TIMEOUT_S:g} s"
    return None


@contextlib.contextmanager
def offline_mode(active: bool = True) -> Iterator[None]:
    """While active, datasets and huggingface_hub read only their caches: a missing file fails at once, no retries."""
    if not active:
        yield
        return
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE"))
    datasets.config.HF_HUB_OFFLINE = True
    hub_constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved[0], saved[1]
        if saved[2] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[2]


TELEMETRY_ENV = {
    "HF_HUB_DISABLE_TELEMETRY": "1",  # huggingface_hub (and transformers through it): usage pings
    "DISABLE_TELEMETRY": "1",  # older name of the same switch
    "DO_NOT_TRACK": "1",  # https://donottrack.sh, honoured by huggingface_hub
    "HF_UPDATE_DOWNLOAD_COUNTS": "0",  # datasets: a HEAD request per load_dataset to count downloads
}
"""Environment switches that turn off usage reporting and download counting."""


def disable_telemetry() -> None:
    """Turn off telemetry and download counting: set TELEMETRY_ENV and the flags of already-imported libraries.

    datasets and huggingface_hub read these variables at import; the harness may import them first, so
    their module-level flags are set as well."""
    os.environ.update(TELEMETRY_ENV)
    import sys

    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_UPDATE_DOWNLOAD_COUNTS = False
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_DISABLE_TELEMETRY = True


def packaged_builder(name: str) -> bool:
    """True for a datasets generic builder (json, csv, parquet, ...): it reads data_files, not a hub repo."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return name in _PACKAGED_DATASETS_MODULES


def data_file_list(data_files: object) -> list[str]:
    """Every file a datasets data_files argument names: one path, a list, or a mapping split -> path(s)."""
    if data_files is None:
        return []
    if isinstance(data_files, (str, os.PathLike)):
        return [str(data_files)]
    if isinstance(data_files, Mapping):
        return [f for v in data_files.values() for f in data_file_list(v)]
    return [str(f) for f in data_files]  # type: ignore[attr-defined]


def missing_local_data(path: str, name: str | None = None, kwargs: dict | None = None) -> str | None:
    """What of a dataset is not on this machine (None when everything is): checked without the network.

    `path`, `name`, `kwargs` are datasets.load_dataset's path, config name and extra arguments (an lm-eval
    task's dataset_path, dataset_name and dataset_kwargs). Generic builders (json, csv, ...) need their
    data_files on disk; a hub dataset needs a prepared copy in the HF datasets cache (or its hub snapshot).
    """
    kwargs = dict(kwargs or {})
    files = data_file_list(kwargs.get("data_files"))
    local = Path(os.path.expanduser(path))
    if packaged_builder(path) or local.exists():
        for f in files:
            if re.match(r"^[a-z][a-z0-9+]*://", f):
                return f"data file {f} (a URL)"
            if not glob.glob(os.path.expanduser(f)):
                return f"data file {f}"
        return None if files or local.exists() else f"data_files of the '{path}' builder"
    from datasets import config
    from datasets.naming import camelcase_to_snakecase

    cache = os.path.expanduser(str(kwargs.get("cache_dir") or config.HF_DATASETS_CACHE))
    parts = path.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = os.path.join(cache, "___".join(parts))
    pattern = os.path.join(root, "*" if (kwargs or not name) else str(name), "*", "*")
    if any(os.path.isdir(p) for p in glob.glob(pattern)):
        return None
    import huggingface_hub.constants as hub_constants

    snapshots = Path(hub_constants.HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}" / "snapshots"
    if snapshots.is_dir() and any(snapshots.iterdir()):
        return None
    return f"dataset '{path}'" + (f" ({name})" if name else "") + f" in the HF datasets cache ({cache})"


def cached_model(repo_id: str, revision: str | None = None) -> bool:
    """Whether a hub model's config.json is in the local HF hub cache (at that revision): checked without network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # not a valid repo id or revision
        return False
    return isinstance(found, str)


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
