"""Ray plumbing that knows nothing of SIPF: starting or joining Ray (ray_init), the fault-tolerant replica
pool every actor group runs in (pool), the scheduling watchdog (scheduling), per-node precision (precision),
cluster.yaml checks (validate), Ray's fake multi-node provider (fakecluster) and the autoscaler demo
(autoscale).
"""
