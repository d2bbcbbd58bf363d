"""cluster.yaml on one machine: Ray's fake multi-node provider, started from a config derived from it.

`fake_config(cluster.yaml)` keeps every node type's name, custom resources, GPU count and min/max
workers, scales CPU counts down (the default 1/4 turns a g5.2xlarge's 8 vCPUs into this machine's 2 cores)
and swaps the cloud provider for Ray's `FakeMultiNodeProvider`, which the real autoscaler drives: each
"node" it launches is a local raylet with that type's resources. A GPU there is a logical resource only
(nothing CUDA runs on it). `FakeCluster` starts the head (`RAY_FAKE_CLUSTER=1 ray start --head
--autoscaling-config=...`) with zero workers, and can lose a worker node the way a cloud loses a VM: the
provider terminates it (all of its processes) and stops listing it.

Ray's pip wheel ships the provider but not the `example.yaml` that `type: fake_multinode` loads defaults
from, so the config names the same class as an `external` provider module; `FakeProvider` adds to Ray's
class only the terminate-on-request hook, an inventory of node types, the head's type name from
cluster.yaml, and a runtime_env folder per node (all fake nodes share this machine's disk).
"""
from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional

import ray._private.parameter
import yaml
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import NODE_KIND_WORKER, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

WORKER_OBJECT_STORE = 100 << 20     # per fake worker: every "node" shares this machine's memory


def scale_resources(resources: dict, cpu_scale: float) -> dict:
    """A node type's resources on the fake cluster: CPU x cpu_scale (at least 1 where there was any),
    GPUs and custom resources unchanged (they are counts of devices or slots, not capacity)."""
    out = {}
    for k, v in resources.items():
        if k == "CPU":
            out[k] = max(1, round(v * cpu_scale)) if v else 0
        else:
            out[k] = v
    return out


def fake_config(raw: dict, *, gcs_address: str, requests_dir: str, cpu_scale: float = 0.25,
                idle_timeout_minutes: float = 0.5, worker_object_store: int = WORKER_OBJECT_STORE) -> dict:
    """The autoscaler config of a fake cluster with `raw`'s (a parsed cluster.yaml) node types.

    Names, GPU and custom resources, min_workers/max_workers, max_workers and upscaling_speed come from
    `raw`; CPU counts are scaled (scale_resources); idle_timeout_minutes is the demo's (cluster.yaml's
    10 minutes would make a scale-down take 10 minutes). `gcs_address` is this cluster's head (the fake
    provider otherwise assumes port 6379, which another Ray on the machine may hold).
    """
    head = raw["head_node_type"]
    types = {}
    for name, t in raw["available_node_types"].items():
        res = scale_resources(t.get("resources", {}), cpu_scale)
        if name == head:
            types[name] = {"resources": res, "node_config": {}, "max_workers": 0}
        else:
            types[name] = {"resources": res | {"object_store_memory": worker_object_store}, "node_config": {},
                           "min_workers": t.get("min_workers", 0), "max_workers": t.get("max_workers", 0)}
    return {
        "cluster_name": f"{raw.get('cluster_name', 'cluster')}-fake",
        "max_workers": raw.get("max_workers", sum(t.get("max_workers", 0) for t in types.values())),
        "upscaling_speed": raw.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {"type": "external", "module": f"{__name__}.FakeProvider",
                     "gcs_address": gcs_address, "requests_dir": requests_dir, "head_node_type_name": head,
                     # one IP for every "node": the autoscaler must key them by node id
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True,
                     # "launch 2 nodes" launches 2 (Ray's class launches one per request without this)
                     "launch_multiple": True},
        "available_node_types": types,
        "head_node_type": head,
        "auth": {"ssh_user": "ray"},
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


def check_config(cfg: dict) -> dict:
    """Ray's own prepare_config + validate_config (what the monitor runs on start); the prepared config."""
    import logging

    from ray.autoscaler._private.util import prepare_config, validate_config
    quiet = logging.getLogger("ray.autoscaler._private.util")
    level = quiet.level
    quiet.setLevel(logging.ERROR)     # "dropping the empty legacy field": Ray's own external-provider defaults
    try:
        prepared = prepare_config(copy.deepcopy(cfg))
    finally:
        quiet.setLevel(level)
    validate_config(prepared)
    return prepared


class FakeProvider(FakeMultiNodeProvider):
    """Ray's FakeMultiNodeProvider (runs inside the autoscaler's monitor process), plus:

    - the head is tagged with cluster.yaml's head type name (Ray's class calls it ray.head.default);
    - each node gets its own runtime_env folder (see _create_node_with_resources_and_labels);
    - a file `<node id>.request` in provider.requests_dir makes it terminate that worker node with its
      own `terminate_node` (every process of the node, as a lost VM), then write `<node id>.done`
      (JSON: time, type), within a fraction of a second;
    - `inventory.json` in the same folder: every node it ever had (head included), id -> node type.
    """

    def __init__(self, provider_config, cluster_name):
        super().__init__(provider_config, cluster_name)
        head_type = provider_config.get("head_node_type_name")
        if head_type:
            self._nodes[self._head_node_id]["tags"][TAG_RAY_USER_NODE_TYPE] = head_type
        self._requests = Path(provider_config["requests_dir"])
        threading.Thread(target=self._serve_requests, daemon=True, name="fake-provider-requests").start()

    def _serve_requests(self):
        """Terminate the nodes asked for (polls the folder: a lost VM does not wait for the autoscaler)."""
        while True:
            for req in sorted(self._requests.glob("*.request")):
                claimed = req.with_suffix(".claimed")
                try:
                    req.rename(claimed)          # one server per request, even with two provider objects
                except OSError:
                    continue
                node_id = req.name.removesuffix(".request")
                try:
                    with self.lock:
                        tags = self._nodes.get(node_id, {}).get("tags", {})
                        if tags.get(TAG_RAY_NODE_KIND) != NODE_KIND_WORKER:
                            raise ValueError(f"{node_id} is not a running worker node of this provider")
                        t = time.time()
                        self.terminate_node(node_id)
                        result = {"terminated_at": t, "seconds": time.time() - t,
                                  "node_type": tags.get(TAG_RAY_USER_NODE_TYPE)}
                except Exception as e:   # reported to the requester; the thread serves on
                    result = {"error": f"{type(e).__name__}: {e}"}
                (self._requests / f"{node_id}.done").write_text(json.dumps(result))
                claimed.unlink()
            time.sleep(0.2)

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        # Every fake node lives in the one session folder of this machine; with the shared default
        # runtime_env folder, each new node's agent re-unpacks (deletes, then recreates) the job's working
        # dir under the workers already running in it. A VM has its own disk: give each node its own.
        with self.lock:
            params = ray._private.parameter.RayParams
            ray._private.parameter.RayParams = functools.partial(
                params, runtime_env_dir_name=f"runtime_resources_{self._next_node_id + 1:05d}")
            try:
                return super()._create_node_with_resources_and_labels(node_config, tags, count, resources,
                                                                      labels)
            finally:
                ray._private.parameter.RayParams = params

    def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        try:
            return super().create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
        finally:   # the provider's inventory (node id -> type), as a cloud console would list it
            with self.lock:
                seen = {i: n["tags"][TAG_RAY_USER_NODE_TYPE] for i, n in self._nodes.items()}
                inv = self._requests / "inventory.json"
                old = json.loads(inv.read_text()) if inv.exists() else {}
                tmp = inv.with_suffix(".tmp")
                tmp.write_text(json.dumps(old | seen))
                tmp.replace(inv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeCluster:
    """A fake autoscaling cluster from a cluster.yaml, owned by this process (stop() ends all of it).

    `ray start --head --block` runs in its own process group; the monitor it starts launches the fake
    worker raylets as its children, so stopping that group stops exactly this cluster and no other Ray
    on the machine (never `ray stop`, which stops every Ray of the user).
    """

    def __init__(self, cluster_yaml: str | Path, workdir: str | Path, cpu_scale: float = 0.25,
                 idle_timeout_minutes: float = 0.5, head_object_store: int = 200 << 20):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cpu_scale = cpu_scale
        self.requests_dir = self.workdir / "provider-requests"
        self.requests_dir.mkdir(exist_ok=True)
        raw = yaml.safe_load(Path(cluster_yaml).read_text())
        self.config = fake_config(raw, gcs_address="", requests_dir=str(self.requests_dir),
                                  cpu_scale=cpu_scale, idle_timeout_minutes=idle_timeout_minutes)
        check_config(self.config)
        self.config_path = self.workdir / "fake-cluster.yaml"
        self._ports()
        self.head_object_store = head_object_store
        self.proc: Optional[subprocess.Popen] = None
        self.temp_dir: Optional[Path] = None

    def env(self) -> dict:
        """Environment for `ray` commands against this cluster (auth off, the venv's python first)."""
        return dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ADDRESS=self.dashboard,
                    PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")

    def start(self, timeout: float = 240, attempts: int = 3):
        """Start the head (zero workers) and wait until it takes jobs. A head whose raylet misses Ray's
        30 s start-up window on a loaded machine is stopped and started again, up to `attempts` times."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(timeout)
            except RuntimeError as e:
                self.stop()
                if attempt == attempts:
                    raise RuntimeError(f"{e} (after {attempts} attempts)") from None
                print(f"[fakecluster] head start {attempt} failed ({e}); retrying", file=sys.stderr, flush=True)

    def _start_once(self, timeout: float):
        self._ports()
        head = self.config["available_node_types"][self.config["head_node_type"]]["resources"]
        env = dict(self.env(), RAY_FAKE_CLUSTER="1", RAY_DEDUP_LOGS="1",
                   RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5",
                   RAY_prestart_worker_first_driver="0")   # no idle workers started ahead on every new node
        env.pop("RAY_ADDRESS")
        # Every port is this cluster's own: Ray's fixed defaults (agent 52365, client server 10001) are taken
        # by whichever other Ray runs on the machine, and a head without its agent takes no jobs.
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", f"--port={self.port}", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}", f"--dashboard-agent-listen-port={_free_port()}",
               f"--ray-client-server-port={_free_port()}", f"--metrics-export-port={_free_port()}",
               f"--num-cpus={int(head.get('CPU', 0))}", f"--num-gpus={int(head.get('GPU', 0))}",
               f"--object-store-memory={self.head_object_store}", f"--autoscaling-config={self.config_path}",
               "--disable-usage-stats"]
        # Ray's temp dir (sessions, logs, sockets) of this cluster only; short, for the socket path limit
        self.temp_dir = Path(tempfile.mkdtemp(prefix="sitf-fc-"))
        cmd.append(f"--temp-dir={self.temp_dir}")
        custom = {k: v for k, v in head.items() if k not in ("CPU", "GPU", "object_store_memory", "memory")}
        if custom:
            cmd.append(f"--resources={json.dumps(custom)}")
        self.log = open(self.workdir / "ray-start.log", "a")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while not self._head_ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited ({self.proc.returncode}); see {self.log.name}")
            if time.time() > deadline:
                raise RuntimeError(f"the fake cluster's head did not come up in {timeout:.0f} s")
            time.sleep(1)
        return self

    def _ports(self):
        self.port, self.dashboard_port = _free_port(), _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.config["provider"]["gcs_address"] = self.address
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def _head_ready(self) -> bool:
        """The dashboard answers and the head's job agent is registered (`ray job submit` needs it)."""
        try:
            urllib.request.urlopen(self.dashboard + "/api/version", timeout=5)
            from ray.util.state import list_nodes
            heads = [n for n in list_nodes(address=self.dashboard, timeout=10, raise_on_missing_output=False)
                     if n.is_head_node and n.state == "ALIVE"]
            if not heads:
                return False
            from ray.job_submission import JobSubmissionClient
            JobSubmissionClient(self.dashboard).list_jobs()
            return True
        except Exception:
            return False

    def stop(self, timeout: float = 5):
        """SIGTERM to the whole group (head, monitor, fake workers, their workers), SIGKILL what is left
        after `timeout` s (`ray start --block` would otherwise drain its empty node for 30 s)."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.time() + timeout
        while time.time() < deadline and (self.proc.poll() is None or _group_alive(pgid)):
            time.sleep(0.5)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None
        self.log.close()
        logs = self.session_logs()
        if self.temp_dir and logs.exists():   # keep Ray's logs of this cluster, drop its temp dir
            shutil.rmtree(self.workdir / "ray-logs", ignore_errors=True)
            shutil.copytree(logs, self.workdir / "ray-logs", ignore=shutil.ignore_patterns("*.sock", "old"),
                            ignore_dangling_symlinks=True)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.temp_dir = None

    def session_logs(self) -> Path:
        """This cluster's Ray log folder (monitor.log is the autoscaler's)."""
        if self.temp_dir and (self.temp_dir / "session_latest").exists():
            return self.temp_dir / "session_latest" / "logs"
        return self.workdir / "ray-logs"     # copied there by stop()

    def node_types(self) -> dict:
        """node id -> node type of every node the provider ever had (head included)."""
        inv = self.requests_dir / "inventory.json"
        return json.loads(inv.read_text()) if inv.exists() else {}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def terminate_node(self, node_id: str, timeout: float = 60) -> dict:
        """Ask the provider to terminate worker `node_id` (as a cloud losing the VM); its report."""
        done = self.requests_dir / f"{node_id}.done"
        (self.requests_dir / f"{node_id}.request").write_text("")
        deadline = time.time() + timeout
        while not done.exists():
            if time.time() > deadline:
                raise TimeoutError(f"the provider did not terminate {node_id} in {timeout:.0f} s")
            time.sleep(0.2)
        report = json.loads(done.read_text())
        if "error" in report:
            raise ValueError(report["error"])
        return report


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
