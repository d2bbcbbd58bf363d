"""Bounded waits for cluster resources: what the cluster cannot place stops the command with one line.

Every resource request of a run goes through a placement group (generator and PRM-scorer pools, Ray Train's
worker group, Ray Serve LLM's engine) or a plain actor (Serve's ingress). A request that is never placed
would otherwise wait forever in silence. `Watchdog.check()` is called by whoever waits; it raises
ClusterError naming what was asked for and what the cluster has when a placement group has been pending
for longer than `schedule_timeout()`, or at once when Ray marks it infeasible on a local cluster (a local
cluster never grows, so infeasible means never).

The bound: `SITF_SCHEDULE_TIMEOUT` seconds if set; else 60 s on a local cluster; 900 s on a joined cluster
(RAY_ADDRESS), where Ray's autoscaler may take minutes to start a node for it.
"""
from __future__ import annotations

import os
import time
from typing import Optional

import ray


class ClusterError(RuntimeError):
    """The cluster cannot be reached or cannot give what the config asks for (message says which)."""


def joined() -> bool:
    """True when this driver runs on a cluster it did not start (RAY_ADDRESS: ray job submit, ray up)."""
    return bool(os.environ.get("RAY_ADDRESS"))


def schedule_timeout() -> float:
    """Seconds a resource request may stay unplaced (module docstring)."""
    if os.environ.get("SITF_SCHEDULE_TIMEOUT"):
        return float(os.environ["SITF_SCHEDULE_TIMEOUT"])
    return 900.0 if joined() else 60.0


def _fmt(res: dict) -> str:
    # CPU and GPU first, then custom resources; not Ray's own (node:..., memory, a placement group's bundle_*/X_group_*)
    keys = [k for k in ("CPU", "GPU") if k in res] + sorted(
        k for k in res if k not in ("CPU", "GPU") and "_group_" not in k
        and not k.startswith(("node:", "memory", "object_store", "bundle_group")))
    return ", ".join(f"{k} {res[k]:g}" for k in keys) or "nothing"


def cluster_has() -> str:
    """'the cluster has CPU 8, GPU 1 (free: CPU 2)' for the connected cluster."""
    total, free = ray.cluster_resources(), ray.available_resources()
    return f"the cluster has {_fmt(total)} (free: {_fmt({k: free.get(k, 0.0) for k in total})})"


def bundles_text(bundles: list[dict]) -> str:
    """[{'CPU': 1}, {'CPU': 1}] -> '2 x {CPU 1}'."""
    groups: dict = {}
    for b in bundles:
        key = _fmt(b)
        groups[key] = groups.get(key, 0) + 1
    return " + ".join(f"{n} x {{{k}}}" for k, n in groups.items())


def pending_groups() -> list[dict]:
    """Placement groups not yet placed: {'id', 'name', 'bundles' (list of dicts), 'infeasible' (bool)}."""
    from ray.util.placement_group import placement_group_table
    out = []
    for pid, pg in placement_group_table().items():
        if pg.get("state") not in ("PENDING", "RESCHEDULING"):
            continue
        bundles = [dict(b) for _, b in sorted(pg.get("bundles", {}).items(), key=lambda kv: int(kv[0]))]
        out.append({"id": pid, "name": pg.get("name", ""), "bundles": bundles,
                    "infeasible": (pg.get("stats") or {}).get("scheduling_state") == "INFEASIBLE"})
    return out


class Watchdog:
    """Raise ClusterError from `check()` once a placement group has waited too long (or can never fit).

    what: how the request is named to the user, e.g. "Ray Train workers (cluster.train_workers=2, cluster.train_cpus=64)".
    only: a predicate on a pending group (dict from pending_groups) selecting the ones this wait is about;
    default: every pending group of the cluster.
    """

    def __init__(self, what: str, only=None, timeout: Optional[float] = None):
        self.what, self.only = what, only
        self.timeout = schedule_timeout() if timeout is None else timeout
        self.first_seen: dict[str, float] = {}
        self.started = time.time()

    def check(self) -> None:
        now = time.time()
        for pg in pending_groups():
            if self.only is not None and not self.only(pg):
                continue
            seen = self.first_seen.setdefault(pg["id"], now)
            never = pg["infeasible"] and not joined()
            if never or now - seen > self.timeout:
                when = "never (no node of this local cluster is that large)" if never else \
                    f"not within {self.timeout:.0f} s"
                raise ClusterError(f"{self.what}: asked for {bundles_text(pg['bundles'])}, placed {when}; "
                                   f"{cluster_has()}. Lower the cluster.* settings or add resources "
                                   f"(SITF_SCHEDULE_TIMEOUT sets the wait)")


def check_local_fits(needs: dict) -> None:
    """On a local cluster (this command's own: no node will ever join it) each request must fit on one of its
    nodes, checked at start: the Watchdog's "placed never" otherwise came when the request was first made, 40 s
    into a quickstart. needs: what -> one replica's resources, e.g. {"Ray Train workers (cluster.train_cpus=64)":
    {"CPU": 64}}. Raises ClusterError naming the first that cannot fit; a joined cluster (RAY_ADDRESS) may
    grow and is left to the Watchdog."""
    if joined():
        return
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for what, bundle in needs.items():
        want = {k: float(v) for k, v in bundle.items() if v}
        if not any(all(res.get(k, 0.0) >= v for k, v in want.items()) for res in nodes):
            raise ClusterError(f"{what}: asked for {bundles_text([want])}, placed never (no node of this local "
                               f"cluster is that large); {cluster_has()}. Lower the cluster.* settings or add "
                               f"resources")


def wait_placement_group(pg, what: str, poll_s: float = 1.0) -> None:
    """Block until `pg` is placed; ClusterError (and the group removed) when it cannot be (Watchdog)."""
    from ray.util.placement_group import remove_placement_group
    pid = pg.id.hex()
    dog = Watchdog(what, only=lambda g: g["id"] == pid)
    ready = pg.ready()
    while True:
        done, _ = ray.wait([ready], timeout=poll_s)
        if done:
            return
        try:
            dog.check()
        except ClusterError:
            remove_placement_group(pg)
            raise
