"""Process feedback: Monte-Carlo step labels (labeling), the PRM model and its scorer actors (prm,
scorers), reward aggregation and label/PRM quality (quality), preference pairs (pairs), the built-in
verifier model (verifier), and the iteration's feedback stages (stages: label, PRM, score, pairs).
"""
