"""Serving a trained run: the OpenAI-compatible app on Ray Serve LLM with /v1/solve and /v1/score (app)
and its request/response models (api_models).
"""
