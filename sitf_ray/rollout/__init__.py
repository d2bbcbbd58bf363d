"""The policy writing text: engines (vLLM, HF), generator actors (generators), sampling N paths per
question (sampling), greedy evaluation (evaluate), the weight broadcast to generators (weights, weights_nccl),
the policy folder format (policy_folder), and the iteration's rollout stages (stages: sample, broadcast,
evaluate).
"""
