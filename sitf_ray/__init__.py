"""sitf-ray: self-iterative process feedback (SIPF) for small language models on Ray, vLLM and TRL."""
__version__ = "0.1.0"
