"""Ray Serve application over a trained run: completions, PRM-reranked solving, step scoring.

    POST /v1/completions   OpenAI-style subset: prompt (str | list), max_tokens, temperature, top_p, n, stop
    POST /v1/solve         best-of-N paths reranked by the PRM: the answer, its steps with scores, the reward
    POST /v1/score         PRM step scores for a given solution
    GET  /healthz, GET /v1/models, GET /openapi.json

Requests are validated by pydantic (422 with the offending field), bodies over `serve.max_body_bytes` get
413, n / max_tokens / prompt counts have hard limits, and with a token configured (config `serve.token` or
$SITF_API_TOKEN) every /v1 call needs `Authorization: Bearer <token>` (401 otherwise). Concurrent
requests are batched into one engine call (`serve.batch`). Binds 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
from pathlib import Path
from typing import Optional, Union

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve

from .engines.base import GenParams


class ServeLimits(BaseModel):
    max_n: int = 16
    max_tokens: int = 512
    max_prompts: int = 32
    max_body_bytes: int = 64 * 1024
    max_prompt_chars: int = 8000


LIMITS = ServeLimits()


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompletionRequest(_Req):
    model: Optional[str] = None
    prompt: Union[str, list[str]]
    max_tokens: int = Field(128, ge=1, le=LIMITS.max_tokens)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=LIMITS.max_n)
    stop: Optional[Union[str, list[str]]] = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        items = [v] if isinstance(v, str) else v
        if not items:
            raise ValueError("prompt must not be empty")
        if len(items) > LIMITS.max_prompts:
            raise ValueError(f"at most {LIMITS.max_prompts} prompts per request")
        if any(len(p) > LIMITS.max_prompt_chars for p in items):
            raise ValueError(f"each prompt must be at most {LIMITS.max_prompt_chars} characters")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > 4 or any(not s for s in items):
            raise ValueError("stop: at most 4 non-empty strings")
        return v


class SolveRequest(_Req):
    question: str = Field(..., min_length=1, max_length=LIMITS.max_prompt_chars)
    n: int = Field(8, ge=1, le=LIMITS.max_n)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    max_tokens: int = Field(256, ge=1, le=LIMITS.max_tokens)


class ScoreRequest(_Req):
    question: str = Field(..., min_length=1, max_length=LIMITS.max_prompt_chars)
    solution: Optional[str] = Field(None, max_length=4 * LIMITS.max_prompt_chars)
    steps: Optional[list[str]] = Field(None, max_length=64)

    @field_validator("steps")
    @classmethod
    def _steps(cls, v):
        if v is not None and (not v or any(not isinstance(s, str) or not s.strip() for s in v)):
            raise ValueError("steps must be a non-empty list of non-empty strings")
        return v


def latest(run_dir: Path, what: str) -> Optional[Path]:
    """The newest iter_k/<what> folder of a run (policy or prm)."""
    found = sorted(run_dir.glob(f"iter_*/{what}/config.json"))
    return found[-1].parent if found else None


app = FastAPI(title="sitf-ray", version="0.1.0",
              description="Policy completions and process-reward-model reranking over a sitf-ray run.")


@app.middleware("http")
async def limit_body(request: Request, call_next):
    """Refuse oversized bodies before reading them (413), whatever the declared route."""
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > LIMITS.max_body_bytes):
        return JSONResponse({"detail": f"request body over {LIMITS.max_body_bytes} bytes"}, status_code=413)
    if size is None and request.method == "POST":
        body = await request.body()
        if len(body) > LIMITS.max_body_bytes:
            return JSONResponse({"detail": f"request body over {LIMITS.max_body_bytes} bytes"}, status_code=413)
    return await call_next(request)


@serve.deployment(ray_actor_options={"num_cpus": 1})
@serve.ingress(app)
class SITFServer:
    def __init__(self, run_dir: str, token: Optional[str] = None, threads: int = 1):
        from . import config as C
        from .engines.base import EngineSpec, make_engine
        from .pipeline import engine_spec
        from .prm import PRMModel
        from .tasks import get_task
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        run = Path(run_dir)
        self.cfg = C.load(run / "config.yaml")
        self.task = get_task(self.cfg.task.name)
        self.policy = latest(run, "policy")
        if self.policy is None:
            raise RuntimeError(f"{run}: no trained policy to serve")
        spec: EngineSpec = engine_spec(self.cfg, str(self.policy))
        spec.threads = threads
        self.engine = make_engine(spec)
        from .weights import policy_payload
        kind, payload = policy_payload(self.policy, self.cfg.cluster.merge_lora)
        (self.engine.load_adapter if kind == "adapter" else self.engine.load_state)(payload, 1)
        prm = latest(run, "prm")
        self.prm = PRMModel(str(prm), max_len=self.cfg.prm.max_len, threads=threads) if prm else None
        self.model_id = f"sitf-{run.name}-{self.policy.parent.name}"
        self.token = token
        self.lock = asyncio.Lock()

    # ------------------------------------------------------------------------------------ plumbing
    def _auth(self, request: Request):
        if not self.token:
            return
        got = request.headers.get("authorization", "")
        if not (got.startswith("Bearer ") and secrets.compare_digest(got[7:], self.token)):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    async def _generate(self, prompts: list[str], params: GenParams) -> list:
        async with self.lock:   # one engine, one batch at a time; the event loop stays free
            return await asyncio.to_thread(self.engine.generate, prompts, params, int(time.time() * 1000) & 0x7FFFFFFF)

    # ----------------------------------------------------------------------------------- endpoints
    @app.get("/healthz")
    def healthz(self):
        return {"status": "ok", "policy": str(self.policy), "prm": self.prm is not None}

    @app.get("/v1/models")
    def models(self, request: Request):
        self._auth(request)
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "owned_by": "sitf-ray"}]}

    @app.post("/v1/completions")
    async def completions(self, body: CompletionRequest, request: Request):
        self._auth(request)
        if body.model not in (None, self.model_id):
            raise HTTPException(404, f"model {body.model!r} not found; this server has {self.model_id!r}")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        outs = await self._generate(prompts, GenParams(n=body.n, temperature=body.temperature, top_p=body.top_p,
                                                       max_tokens=body.max_tokens, stop=stop))
        choices, used = [], 0
        for i, out in enumerate(outs):
            for c in out:
                choices.append({"index": len(choices), "prompt_index": i, "text": c.text,
                                "finish_reason": c.finish_reason})
                used += c.n_tokens
        return {"id": f"cmpl-{uuid.uuid4().hex[:16]}", "object": "text_completion", "created": int(time.time()),
                "model": self.model_id, "choices": choices, "usage": {"completion_tokens": used}}

    def _scored(self, question: str, steps: list[str]) -> dict:
        from .prm import aggregate
        scores = self.prm.score([{"prompt": self.task.prompt({"question": question}), "steps": steps}])[0]
        return {"steps": [{"text": s, "score": sc} for s, sc in zip(steps, scores)],
                "reward": aggregate(scores, self.cfg.prm.aggregate)}

    @app.post("/v1/solve")
    async def solve(self, body: SolveRequest, request: Request):
        self._auth(request)
        if self.prm is None:
            raise HTTPException(409, "this run has no trained PRM yet; /v1/completions still works")
        prompt = self.task.prompt({"question": body.question})
        outs = await self._generate([prompt], GenParams(n=body.n, temperature=body.temperature,
                                                        max_tokens=body.max_tokens, stop=tuple(self.task.stop)))
        cands = []
        for c in outs[0]:
            steps = self.task.split_steps(c.text) or [c.text.strip() or "(empty)"]
            cands.append(self._scored(body.question, steps) | {"text": c.text})
        best = max(cands, key=lambda x: x["reward"])
        return {"answer": self.task.extract_answer(best["text"]), "reward": best["reward"], "steps": best["steps"],
                "candidates": len(cands), "model": self.model_id}

    @app.post("/v1/score")
    async def score(self, body: ScoreRequest, request: Request):
        self._auth(request)
        if self.prm is None:
            raise HTTPException(409, "this run has no trained PRM yet")
        if (body.solution is None) == (body.steps is None):
            raise HTTPException(422, "give exactly one of 'solution' (text) or 'steps' (list)")
        steps = body.steps or self.task.split_steps(body.solution)
        if not steps:
            raise HTTPException(422, "solution has no steps (no non-empty lines)")
        return await asyncio.to_thread(self._scored, body.question, steps)


def build_app(run_dir: str, token: Optional[str] = None, replicas: int = 1, max_replicas: Optional[int] = None,
              threads: int = 1):
    opts: dict = {}
    if max_replicas and max_replicas > replicas:
        opts["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas,
                                      "target_ongoing_requests": 4}
    else:
        opts["num_replicas"] = replicas
    return SITFServer.options(**opts).bind(str(Path(run_dir).resolve()), token, threads)


def start(run_dir: str, host: str = "127.0.0.1", port: int = 8000, token: Optional[str] = None,
          replicas: int = 1, max_replicas: Optional[int] = None, name: str = "sitf") -> str:
    """Deploy on the connected Ray cluster; returns the base URL."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(run_dir, token, replicas, max_replicas), name=name, route_prefix="/")
    return f"http://{host}:{port}"


def serve_forever(run_dir: str, host: str, port: int, overrides: list[str]) -> int:
    from .actors import init_ray
    opts = dict(o.split("=", 1) for o in overrides if "=" in o)
    token = opts.get("token") or os.environ.get("SITF_API_TOKEN")
    init_ray()
    url = start(run_dir, host, port, token, int(opts.get("replicas", 1)),
                int(opts["max_replicas"]) if "max_replicas" in opts else None)
    print(f"serving {run_dir} at {url} (OpenAPI: {url}/openapi.json){' with bearer token' if token else ''}",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0
