"""NCCL weight sync (weights_nccl.py): the CUDA check everywhere, the real broadcast only on GPU machines."""
from __future__ import annotations

import pytest
import torch

from sitf_ray.rollout.weights_nccl import NCCLSender, push_policy_nccl


def test_nccl_sync_refuses_without_cuda(monkeypatch, tmp_path):
    # CUDA is checked before anything else: no policy folder is read, no Ray or vLLM is touched
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="NCCL weight sync needs CUDA"):
        push_policy_nccl(object(), tmp_path / "missing", 1)
    with pytest.raises(RuntimeError, match="NCCL weight sync needs CUDA"):
        NCCLSender([])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs 2 CUDA GPUs: one replica plus the sender (NCCL refuses two ranks on one GPU)")
def test_nccl_push_reaches_the_replica(m0, ray_session, tmp_path):

    from sitf_ray.rollout.generators import GeneratorPool
    from sitf_ray.rollout.engines import EngineSpec, GenParams
    from sitf_ray.tasks import get_task
    from sitf_ray.rollout.weights_nccl import close_nccl

    from conftest import make_config, perturbed_copy

    task, greedy = get_task("arith"), GenParams(n=1, temperature=0.0, max_tokens=48)
    prompts = [task.prompt(r) for r in task.load("test", make_config().task)][:32]
    spec = EngineSpec(model=str(m0), kind="vllm", device="cuda", max_model_len=256,
                      extra={"weight_sync": "nccl", "gpu_memory_utilization": 0.3})
    pool = GeneratorPool(spec, replicas=1, cpus=1, gpus=1, chunk_size=16)
    try:
        before = [o[0].text for o in pool.generate(prompts, greedy, seed=0)]
        perturbed_copy(m0, tmp_path / "perturbed")

        rep = push_policy_nccl(pool, tmp_path / "perturbed", 1)
        assert (rep.kind, rep.version, rep.replicas) == ("nccl", 1, 1) and rep.bytes > 0
        info = pool.info()[0]
        assert (info["version"], info["digest"]) == (1, rep.digest)
        after = [o[0].text for o in pool.generate(prompts, greedy, seed=0)]
        assert after != before

        # a second push reuses the group; sending M_0 back must restore its exact greedy outputs,
        # which checks that the bytes arrived intact (the replica's digest is only the sender's, echoed)
        rep2 = push_policy_nccl(pool, m0, 2)
        assert rep2.version == 2 and pool.info()[0]["version"] == 2
        assert [o[0].text for o in pool.generate(prompts, greedy, seed=0)] == before
    finally:
        close_nccl(pool)
        pool.shutdown()
