"""Ray Train: the driver-side session that runs fit jobs on a long-lived worker group (session), the
worker loop (worker), the objective table (objectives: SFT, ORPO, DPO, PRM) with the policy objectives
(policy_objectives) and the PRM objective (prm_objective), pair datasets read with Ray Data (datasets), model
sources (model_sources), and the training stages (stages: M_0, the policy update, the matched SFT control,
the fit-job builder).
"""
