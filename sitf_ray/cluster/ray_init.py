"""Starting or joining Ray: every command connects to RAY_ADDRESS (ray job submit) or starts a local Ray
through `init_ray`, with quiet logs and the environment actors need (ACTOR_ENV)."""
from __future__ import annotations

import logging
import os
from typing import Optional

import ray

from sitf_ray.cluster.scheduling import ClusterError
from sitf_ray.runs import console

# Quiet, in-process vLLM inside actors; tokenizers must not fork thread pools under Ray.
ACTOR_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING",
             "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1",
             "RAY_DEDUP_LOGS": "1"}


def _check_reachable(address: str, timeout: float = 10.0):
    """Fail in seconds, not minutes, when RAY_ADDRESS points at nothing (ray.init retries for long)."""
    import socket
    from urllib.parse import urlparse
    if address in ("auto", "local"):
        return
    u = urlparse(address if "://" in address else f"ray://{address}")
    if not u.hostname or not u.port:
        raise ClusterError(f"RAY_ADDRESS={address}: expected host:port (or ray://host:port)")
    try:
        socket.create_connection((u.hostname, u.port), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at RAY_ADDRESS={address}: {e.strerror or e}") from None


def local_cpus(configured: Optional[int] = None) -> int:
    """Logical CPUs of a local Ray started by any command: cluster.num_cpus, else max(8, 2 x cores).

    More logical CPUs than cores on purpose: generators, scorers, Ray Train workers and Serve's ingress
    mostly wait on each other, and each asks for whole CPUs; with the machine's 2 cores as 2 logical CPUs,
    the LLM server's placement group alone took both and `serve` never started (issue 21)."""
    return int(configured or max(8, 2 * (os.cpu_count() or 1)))


def init_ray(num_cpus: Optional[int] = None, quiet: bool = True) -> dict:
    """Connect to the cluster in RAY_ADDRESS (ray job submit) or start a local Ray with local_cpus(num_cpus)
    logical CPUs. Every command starts Ray through here."""
    if ray.is_initialized():
        return ray.cluster_resources()
    os.environ.update({k: v for k, v in ACTOR_ENV.items() if k not in os.environ})
    # Ray Train's controller polls workers every 2 s by default: on short fits that is pure waiting.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    kw: dict = {"log_to_driver": not quiet, "configure_logging": True, "logging_level": logging.WARNING}
    address = os.environ.get("RAY_ADDRESS", "")
    # a local cluster's worker start-up concurrency follows the CPUs it declares: the resolved number (with
    # cluster.num_cpus unset it was None, Ray kept its default of 2 on 2 cores, and the quickstart's console
    # showed "(raylet) WARNING: 8 PYTHON worker processes have been started ...")
    if not address:
        num_cpus = local_cpus(num_cpus)
    console.before_init(num_cpus, local=not address, quiet=quiet)
    if address:
        _check_reachable(address)
        try:
            ray.init(**kw)
        except ConnectionError as e:
            raise ClusterError(f"cannot reach the Ray cluster at RAY_ADDRESS={address}: {e}") from None
    else:
        # Token authentication stays on for a local cluster (Ray's default: its ports listen on every
        # interface, not only loopback); only Ray's notice that it is on by default is kept off the console.
        # A user's RAY_AUTH_MODE wins; a joined cluster keeps its own (docs/RELIABILITY.md).
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        print(f"[ray] starting a local Ray ({num_cpus} logical CPUs on {os.cpu_count()} cores)", flush=True)
        # address="local": always a fresh local instance, never a stale `ray start` cluster recorded in
        # /tmp/ray/ray_current_cluster (which plain ray.init() would try to join)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kw)
    console.after_init(quiet)
    return ray.cluster_resources()
