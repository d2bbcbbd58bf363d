"""Ray metrics for every stage, all named sitf_* (scraped from Ray's metrics endpoint by Prometheus).

The names here are the contract with dashboards/grafana.json: a test checks that every metric a panel
queries is exported by a short run.
"""
from __future__ import annotations

NAMES = {
    "sitf_samples_total": "sampled paths kept",
    "sitf_sample_tokens_per_second": "tokens/s while sampling",
    "sitf_rollouts_total": "Monte-Carlo rollouts run by the labeler",
    "sitf_label_positives_total": "steps labelled correct",
    "sitf_train_loss": "last epoch loss of a training stage (tag: objective)",
    "sitf_pairs_total": "preference pairs written",
    "sitf_weight_version": "policy weight version held by the generators",
    "sitf_sync_seconds": "seconds to broadcast a new policy to all generators",
    "sitf_eval_accuracy": "test accuracy after the latest evaluation",
    "sitf_stage_seconds": "wall seconds of a stage (tag: stage)",
}


class Metrics:
    """Thin holder of the ray.util.metrics objects; safe to call when Ray metrics are unavailable."""

    def __init__(self, enabled: bool = True):
        self._gauges: dict = {}
        self.ok = False
        if not enabled:
            return
        try:
            from ray.util.metrics import Counter, Gauge, Histogram
            self.samples = Counter("sitf_samples_total", NAMES["sitf_samples_total"])
            self.tok_s = Gauge("sitf_sample_tokens_per_second", NAMES["sitf_sample_tokens_per_second"])
            self.rollouts = Counter("sitf_rollouts_total", NAMES["sitf_rollouts_total"])
            self.positives = Counter("sitf_label_positives_total", NAMES["sitf_label_positives_total"])
            self.train_loss = Gauge("sitf_train_loss", NAMES["sitf_train_loss"], tag_keys=("objective",))
            self.n_pairs = Counter("sitf_pairs_total", NAMES["sitf_pairs_total"])
            self.version = Gauge("sitf_weight_version", NAMES["sitf_weight_version"])
            self.sync_s = Histogram("sitf_sync_seconds", NAMES["sitf_sync_seconds"],
                                    boundaries=[0.01, 0.05, 0.1, 0.5, 1, 5, 30])
            self.acc = Gauge("sitf_eval_accuracy", NAMES["sitf_eval_accuracy"])
            self.stage_s = Histogram("sitf_stage_seconds", NAMES["sitf_stage_seconds"],
                                     boundaries=[1, 5, 15, 60, 300, 1800], tag_keys=("stage",))
            self.ok = True
        except Exception:   # metrics are never worth failing a run for
            self.ok = False
        # Ray drops a gauge series ~2 export intervals after its last set(); a "current value" gauge
        # (weight version, accuracy) must stay visible while the driver lives, so re-set them.
        if self.ok:
            import threading
            threading.Thread(target=self._keep_gauges, daemon=True, name="sitf-gauges").start()

    def _keep_gauges(self):
        import time
        while True:
            time.sleep(5)
            for (gauge, tags), value in list(self._gauges.items()):
                try:
                    gauge.set(value, tags=dict(tags) if tags else None)
                except Exception:
                    pass

    def _set(self, gauge, value: float, tags: dict | None = None):
        gauge.set(value, tags=tags)
        self._gauges[(gauge, tuple(sorted((tags or {}).items())))] = value

    def _do(self, fn):
        if self.ok:
            try:
                fn()
            except Exception:
                pass

    def sampled(self, st: dict, seconds: float):
        self._do(lambda: (self.samples.inc(max(st["kept"], 1e-9)),
                          self._set(self.tok_s, st["tokens"] / max(seconds, 1e-9))))

    def labeled(self, stats):
        self._do(lambda: (self.rollouts.inc(max(stats.rollouts, 1e-9)),
                          self.positives.inc(max(stats.positives, 1e-9))))

    def loss(self, objective: str, value: float):
        self._do(lambda: self._set(self.train_loss, float(value), {"objective": objective}))

    def pairs(self, n: int):
        self._do(lambda: self.n_pairs.inc(max(n, 1e-9)))

    def sync(self, rep):
        self._do(lambda: (self._set(self.version, rep.version), self.sync_s.observe(rep.seconds)))

    def eval(self, accuracy: float):
        self._do(lambda: self._set(self.acc, accuracy))

    def stage(self, name: str, seconds: float):
        self._do(lambda: self.stage_s.observe(seconds, tags={"stage": name}))


_METRICS = None


def get() -> Metrics:
    """The process's Metrics, created on first use once Ray is up (before that: a no-op stand-in)."""
    global _METRICS
    if _METRICS is None:
        import ray
        if not ray.is_initialized():
            return Metrics(enabled=False)
        _METRICS = Metrics()
    return _METRICS
