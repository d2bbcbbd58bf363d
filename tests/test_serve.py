"""The Ray Serve API over a trained run: real HTTP calls, the real `openai` client (chat, streaming), every
kind of bad request with the field named, context overflow counted in tokens, auth, best-of-N reranking, the
same scores as the run's own score stage, bounded loopback load and a schema fuzz (all on one Serve app: each
start costs about a minute on 2 cores)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import free_port, make_config

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def api(mini_run, ray_session):
    from ray import serve

    from sitf_ray.serving.app import start
    d, _ = mini_run
    url = start(str(d), port=free_port(), token=TOKEN, name="sitf-test")
    # start() returns (and `serve` prints its "serving" line) only once every deployment, the vLLM engine's
    # included, has a running replica: Serve queues a request to a replica still starting, so a first
    # request would succeed either way and cannot tell (issue 29; seen failing with the readiness check
    # replaced by `True`, which returned while the LLM replica was still starting)
    app = serve.status().applications["sitf-test"]
    assert all(dep.replica_states.get("RUNNING", 0) >= 1 for dep in app.deployments.values()), \
        {n: (dep.status, dep.replica_states) for n, dep in app.deployments.items()}
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {TOKEN}"
    yield url, s
    serve.shutdown()


def test_health_models_and_openapi(api):
    url, s = api
    assert requests.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
    models = s.get(f"{url}/v1/models", timeout=30).json()
    assert models["data"][0]["id"].startswith("sitf-")
    spec = requests.get(f"{url}/openapi.json", timeout=30).json()
    assert {"/v1/completions", "/v1/solve", "/v1/score", "/healthz", "/v1/models"} <= set(spec["paths"])


def test_auth_is_required(api):
    url, _ = api
    for method, path, body in [("get", "/v1/models", None), ("post", "/v1/completions", {"prompt": "x"}),
                               ("post", "/v1/score", {"question": "q", "solution": "1 + 1 = 2"})]:
        r = requests.request(method, url + path, json=body, timeout=30)
        assert r.status_code == 401, (path, r.status_code)
        r = requests.request(method, url + path, json=body, headers={"Authorization": "Bearer wrong"}, timeout=30)
        assert r.status_code == 401


def test_completions(api):
    url, s = api
    q = "Question: Ann has 5 pens, buys 3 more. How many pens now?\nAnswer:\n"
    r = s.post(f"{url}/v1/completions", json={"prompt": [q, q], "max_tokens": 32, "n": 2, "temperature": 1.0},
               timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and sorted(c["index"] for c in body["choices"]) == [0, 1, 2, 3]
    assert body["usage"]["completion_tokens"] > 0 and body["usage"]["prompt_tokens"] > 0
    greedy = s.post(f"{url}/v1/completions", json={"prompt": q, "max_tokens": 32, "temperature": 0},
                    timeout=60).json()
    assert "The answer is" in greedy["choices"][0]["text"]


def test_solve_and_score(api):
    url, s = api
    r = s.post(f"{url}/v1/solve", json={"question": "Ann has 5 pens, buys 3 more. How many pens now?", "n": 4},
               timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["candidates"] == 4 and body["steps"] and all(0 <= st["score"] <= 1 for st in body["steps"])
    assert 0 <= body["reward"] <= 1
    r = s.post(f"{url}/v1/score", json={"question": "Ann has 5 pens, buys 3 more. How many pens now?",
                                        "solution": "5 + 3 = 8\nThe answer is 8"}, timeout=60)
    assert r.status_code == 200 and len(r.json()["steps"]) == 2
    r2 = s.post(f"{url}/v1/score", json={"question": "Ann has 5 pens, buys 3 more. How many pens now?",
                                         "steps": ["5 + 3 = 8", "The answer is 8"]}, timeout=60)
    assert r2.json() == r.json()


def test_solve_returns_the_candidate_that_score_ranks_highest(api):
    """Best-of-N reranking: every candidate /v1/solve sampled gets from /v1/score the reward it was ranked by,
    and the answer is the one with the highest."""
    url, s = api
    q = "Ann has 12 pens, buys 7 more, then gives 5 away. How many pens now?"
    body = s.post(f"{url}/v1/solve", json={"question": q, "n": 6, "return_candidates": True}, timeout=120).json()
    assert len(body["all"]) == body["candidates"] == 6
    rewards = []
    for c in body["all"]:
        r = s.post(f"{url}/v1/score", json={"question": q, "steps": [st["text"] for st in c["steps"]]}, timeout=60)
        assert r.json()["reward"] == pytest.approx(c["reward"], abs=1e-6)
        rewards.append(r.json()["reward"])
    assert body["reward"] == pytest.approx(max(rewards), abs=1e-6)
    assert body["steps"] == body["all"][rewards.index(max(rewards))]["steps"] or \
        sorted(rewards)[-1] - sorted(rewards)[-2] < 1e-6          # a tie may pick either


def test_score_endpoint_scores_a_path_as_the_pipeline_did(api, mini_run):
    """/v1/score gives the step scores the run's own score stage gave the same path with the same PRM (the
    newest, iter_02's), the calculator's verdict included: a step with a false equation scores 0.0 in both."""
    from sitf_ray import config as C
    from sitf_ray.runs.artifacts import read_jsonl
    from sitf_ray.tasks import get_task
    url, s = api
    d, _ = mini_run
    cfg = C.load(d / "config.yaml")
    task = get_task("arith")
    rows = {r["id"]: r for r in task.load("train", cfg.task)}
    scored = read_jsonl(d / "iter_02" / "scored.jsonl")
    zeroed = [x for x in scored if 0.0 in x["step_scores"]]
    clean = [x for x in scored if 0.0 not in x["step_scores"]]
    assert cfg.prm.check_steps and zeroed and clean
    for x in zeroed[:3] + clean[:3]:
        r = s.post(f"{url}/v1/score", json={"question": rows[x["qid"]]["question"], "steps": x["steps"]}, timeout=60)
        got = [st["score"] for st in r.json()["steps"]]
        assert got == pytest.approx(x["step_scores"], abs=1e-5), (x["steps"], got, x["step_scores"])
        assert r.json()["reward"] == pytest.approx(x["reward"], abs=1e-5)


@pytest.mark.parametrize("path, body, status", [
    ("/v1/completions", {}, 422),                                           # missing prompt
    ("/v1/completions", {"prompt": []}, 422),                               # empty list
    ("/v1/completions", {"prompt": ""}, 422),                               # empty prompt
    ("/v1/completions", {"prompt": ["x", ""]}, 422),                        # an empty prompt in the list
    ("/v1/completions", {"prompt": "x", "n": 2, "temperature": 0}, 422),    # identical greedy copies
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, 422),   # without stream
    ("/v1/completions", {"prompt": "x", "n": 1000}, 422),                   # over the n limit
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 422),
    ("/v1/completions", {"prompt": "x", "max_tokens": 10**6}, 422),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 422),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 422),
    ("/v1/completions", {"prompt": 42}, 422),                               # wrong type
    ("/v1/completions", {"prompt": "x", "best_of": 3}, 422),                # unknown field
    ("/v1/completions", {"prompt": "x", "stop": [""]}, 422),
    ("/v1/completions", {"prompt": ["x"] * 100}, 422),                      # too many prompts
    ("/v1/completions", {"prompt": "x" * 20000}, 422),                      # prompt too long
    ("/v1/completions", {"prompt": "x", "model": "gpt-9"}, 404),
    ("/v1/chat/completions", {"messages": []}, 422),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": ""}]}, 422),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": []}]}, 422),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "only a system message"}]}, 422),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
     422),                                                                  # nothing left to answer (no template)
    ("/v1/solve", {"question": ""}, 422),
    ("/v1/solve", {"question": "q", "n": 0}, 422),
    ("/v1/score", {"question": "q"}, 422),                                  # neither solution nor steps
    ("/v1/score", {"question": "q", "solution": "a", "steps": ["a"]}, 422),
    ("/v1/score", {"question": "q", "steps": []}, 422),
    ("/v1/score", {"question": "q", "solution": "\n\n"}, 422),
])
def test_bad_requests_get_4xx_with_a_reason(api, path, body, status):
    url, s = api
    r = s.post(url + path, json=body, timeout=60)
    assert r.status_code == status, (r.status_code, r.text)
    assert r.json().get("detail")


def test_malformed_and_oversized_bodies(api):
    url, s = api
    r = s.post(f"{url}/v1/completions", data="{not json", headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 422
    big = json.dumps({"prompt": "x" * 100_000})
    r = s.post(f"{url}/v1/completions", data=big, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413
    assert s.get(f"{url}/v1/completions", timeout=30).status_code == 405
    assert s.get(f"{url}/nope", timeout=30).status_code == 404


# ------------------------------------------------------------------------ OpenAI client: chat, streaming

Q = "Ann has 5 pens, buys 3 more. How many pens now?"


@pytest.fixture(scope="module")
def client(api):
    openai = pytest.importorskip("openai")
    url, s = api
    c = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=120)
    return c, s.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]


def _task_prompt_tokens(mini_run, text: str) -> int:
    from transformers import AutoTokenizer

    from sitf_ray.serving.app import latest
    d, _ = mini_run
    return len(AutoTokenizer.from_pretrained(latest(d, "policy"))(text)["input_ids"])


def test_chat_uses_the_task_prompt_format(client, mini_run):
    """The tiny model has no chat template: a chat turn must read exactly like the task prompt the model
    was trained on, so greedy chat == greedy completion of that prompt, token for token."""
    c, model = client
    chat = c.chat.completions.create(model=model, messages=[{"role": "user", "content": Q}], max_tokens=40,
                                     temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    prompt = f"Question: {Q}\nAnswer:\n"
    comp = c.completions.create(model=model, prompt=prompt, max_tokens=40, temperature=0)
    assert chat.choices[0].message.content == comp.choices[0].text
    assert "The answer is" in chat.choices[0].message.content
    assert chat.usage.prompt_tokens == comp.usage.prompt_tokens == _task_prompt_tokens(mini_run, prompt)
    assert chat.usage.completion_tokens == comp.usage.completion_tokens > 0
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    # without max_tokens the answer may use the rest of the context (capped): it still stops by itself
    free = c.chat.completions.create(model=model, messages=[{"role": "user", "content": Q}], temperature=0)
    assert free.choices[0].message.content == chat.choices[0].message.content


def test_streaming_chat_and_completions(client):
    c, model = client
    whole = c.chat.completions.create(model=model, messages=[{"role": "user", "content": Q}], max_tokens=40,
                                      temperature=0)
    chunks = list(c.chat.completions.create(model=model, messages=[{"role": "user", "content": Q}], max_tokens=40,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    assert len(chunks) > 3 and all(ch.object == "chat.completion.chunk" for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.choices[0].finish_reason
    usage = chunks[-1].usage                     # OpenAI: a last chunk with no choices carries the usage
    assert not chunks[-1].choices and usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    # plain streaming: no usage chunk unless asked
    plain = list(c.chat.completions.create(model=model, messages=[{"role": "user", "content": Q}], max_tokens=8,
                                           temperature=0, stream=True))
    assert all(ch.usage is None for ch in plain)
    prompt = f"Question: {Q}\nAnswer:\n"
    comp = c.completions.create(model=model, prompt=prompt, max_tokens=40, temperature=0)
    parts = list(c.completions.create(model=model, prompt=prompt, max_tokens=40, temperature=0, stream=True,
                                      stream_options={"include_usage": True}))
    assert "".join(p.choices[0].text for p in parts if p.choices) == comp.choices[0].text
    assert parts[-1].usage.completion_tokens == comp.usage.completion_tokens


def test_chat_multi_turn_and_system(client):
    c, model = client
    r = c.chat.completions.create(model=model, temperature=1.0, n=2, max_tokens=24, messages=[
        {"role": "system", "content": "Solve step by step."},
        {"role": "user", "content": "Tom has 2 apples and gets 2 more. How many apples?"},
        {"role": "assistant", "content": "2 + 2 = 4\nThe answer is 4"},
        {"role": "user", "content": [{"type": "text", "text": Q}]}])
    assert len(r.choices) == 2 and all(ch.message.content is not None for ch in r.choices)


# One bad request per field, through the real client: the status and the field it names (error.param).
BAD_CHAT = [
    ({"model": "gpt-9"}, 404, "model"),
    ({"messages": []}, 422, "messages"),
    ({"messages": [{"role": "user", "content": ""}]}, 422, "messages.0.content"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 422, "messages.0.role"),
    ({"max_tokens": 0}, 422, "max_tokens"),
    ({"max_tokens": 10**6}, 422, "max_tokens"),
    ({"max_completion_tokens": 0}, 422, "max_completion_tokens"),
    ({"temperature": -1}, 422, "temperature"),
    ({"temperature": 3}, 422, "temperature"),
    ({"top_p": 0}, 422, "top_p"),
    ({"n": 1000}, 422, "n"),
    ({"n": 2, "temperature": 0}, 422, "n"),
    ({"stop": [""]}, 422, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
    ({"stream_options": {"include_usage": True}}, 422, "stream_options"),
    ({"user": "u" * 1000}, 422, "user"),
    ({"extra_body": {"best_of": 2}}, 422, "best_of"),                          # not an API field here
    ({"extra_body": {"chat_template": "{{ 'x' }}"}}, 422, "chat_template"),   # no templates from clients
    ({"messages": [{"role": "user", "content": "1 + " * 200}]}, 400, "messages"),  # over the context
    ({"messages": [{"role": "user", "content": "1 + " * 100}], "max_tokens": 200}, 400, "messages"),  # with output
]


@pytest.mark.parametrize("change, status, field", BAD_CHAT, ids=[b[2] + f"-{i}" for i, b in enumerate(BAD_CHAT)])
def test_chat_bad_request_names_the_field(client, change, status, field):
    import openai
    c, model = client
    kw = {"model": model, "messages": [{"role": "user", "content": Q}], "max_tokens": 8} | change
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(**kw)
    assert e.value.status_code == status, e.value
    assert e.value.param == field, (e.value.param, e.value.message)
    assert field.split(".")[-1] in e.value.message or status == 404


def test_context_overflow_is_counted_in_tokens(api, mini_run):
    """prompt tokens + max_tokens over the engine's context (tiny model: 256) is a 400 that says which limit
    was crossed, for both endpoints and /v1/solve; a prompt that fits with room for the output passes."""
    url, s = api
    ctx = 256
    prompt = "1 + 2 = 3\n" * 30                             # 300 characters, about 180 tokens
    n = _task_prompt_tokens(mini_run, prompt)
    assert 20 < n < ctx - 20, n
    ok = s.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": ctx - n}, timeout=60)
    assert ok.status_code == 200, ok.text
    over = s.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": ctx - n + 1}, timeout=60)
    assert over.status_code == 400, over.text
    err = over.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    assert f"maximum context length is {ctx} tokens" in err["message"] and f"{n} in the prompt" in err["message"]
    long = s.post(f"{url}/v1/completions", json={"prompt": "7 * 8 = 56\n" * 60, "max_tokens": 1}, timeout=60)
    assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded"
    # one prompt of a list over the limit fails the request
    mixed = s.post(f"{url}/v1/completions", json={"prompt": ["1 + 1", "7 * 8 = 56\n" * 60]}, timeout=60)
    assert mixed.status_code == 400
    r = s.post(f"{url}/v1/solve", json={"question": "7 * 8 = 56\n" * 60, "n": 2}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "question", r.text
    r = s.post(f"{url}/v1/solve", json={"question": Q, "n": 2, "max_tokens": ctx}, timeout=60)
    assert r.status_code == 400 and "context length" in r.json()["error"]["message"]


def test_non_ascii_prompts(api):
    url, s = api
    for p in ["ünïcødé ✓ 数学 ∑ 😀", "Question: 3 − 5 = ?\nAnswer:\n", "\u200b\u00a0x", "\x00\x01"]:
        r = s.post(f"{url}/v1/completions", json={"prompt": p, "max_tokens": 8}, timeout=60)
        assert r.status_code == 200, (p, r.text)
        r = s.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": p}], "max_tokens": 8},
                   timeout=60)
        assert r.status_code == 200, (p, r.text)
    r = s.post(f"{url}/v1/completions", data=b'{"prompt": "\\ud800"}', headers={"Content-Type": "application/json"},
               timeout=60)
    assert r.status_code == 422 and r.json()["error"]["param"] == "prompt"


def test_lora_policy_is_served_merged(m0, tmp_path):
    """vLLM under Ray Serve LLM loads a folder: a LoRA policy is merged into its base once (run/serve/) and
    that folder generates what HF's merged adapter generates; a full policy is served as it is."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sitf_ray.serving.app import serving_folder
    from sitf_ray.tasks import get_task
    from test_generation import make_adapter
    task = get_task("arith")
    prompts = [task.prompt(r) for r in task.load("test", make_config().task)[:6]]
    policy = tmp_path / "iter_01" / "policy"
    want = make_adapter(m0, policy, prompts)
    got_dir = serving_folder(tmp_path, policy)
    assert got_dir == tmp_path / "serve" / "iter_01-merged" and serving_folder(tmp_path, policy) == got_dir
    model, tok = AutoModelForCausalLM.from_pretrained(got_dir), AutoTokenizer.from_pretrained(got_dir)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    gen = model.generate(**enc, max_new_tokens=48, do_sample=False, pad_token_id=tok.pad_token_id)
    assert [tok.decode(g[enc.input_ids.shape[1]:], skip_special_tokens=True) for g in gen] == want
    assert serving_folder(tmp_path, m0) == m0


# ----------------------------------------------------- load and schema fuzz (docs/RELIABILITY.md)

def test_serve_under_bounded_loopback_load(api):
    """16 concurrent clients for 30 s on loopback: no errors; latency percentiles reported."""
    api, auth = api
    body = {"prompt": "Question: Ann has 5 pens, buys 3 more. How many pens now?\nAnswer:\n", "max_tokens": 32,
            "temperature": 1.0}
    stop_at = time.time() + 30
    lat, errors = [], []

    def client():
        s = requests.Session()
        s.headers.update(auth.headers)
        while time.time() < stop_at:
            t = time.time()
            try:
                r = s.post(f"{api}/v1/completions", json=body, timeout=60)
                if r.status_code != 200:
                    errors.append(r.status_code)
            except Exception as e:  # connection errors count as failures
                errors.append(repr(e))
            lat.append(time.time() - t)

    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda _: client(), range(16)))
    lat.sort()
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(f"\nserve load: {len(lat)} requests from 16 clients in 30 s ({len(lat) / 30:.1f} req/s), "
          f"p50 {1000 * p50:.0f} ms, p99 {1000 * p99:.0f} ms, errors {len(errors)}")
    assert not errors and len(lat) >= 16


# The fuzz draws the same cases on every run (CI must not be a coin toss). Fresh randomness, on demand:
#   SITF_FUZZ_SEED=random pytest tests/test_serve.py -k fuzz -s     (prints the seed it drew)
#   SITF_FUZZ_SEED=<n> ... replays one; SITF_FUZZ_EXAMPLES=<k> draws k cases per operation (default 25).
FUZZ_SEED = 14_2025

# The cases are drawn in a fresh interpreter that imports only schemathesis: with a fixed seed its draws
# still depend on the drawing process's memory layout (checked: allocating objects, or importing more
# modules, before drawing changes the cases), so drawing inside the test session would tie them to
# whichever tests ran first.
DRAW = """
import json, sys
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
url, rng_seed, examples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cases = []
def keep(case):
    body = None if type(case.body).__name__ == "NotSet" else case.body
    cases.append({"method": case.method, "path": case.formatted_path, "body": body})
for op in schemathesis.openapi.from_url(url).get_all_operations():
    run = settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                   database=None)(given(op.ok().as_strategy())(keep))
    seed(rng_seed)(run)()
json.dump(cases, sys.stdout, default=repr)
"""


def _fuzz_seed() -> int:
    v = os.environ.get("SITF_FUZZ_SEED", "").strip()
    if v == "random":
        import random
        return random.SystemRandom().randrange(2**32)
    return int(v) if v else FUZZ_SEED


def draw_cases(url: str, rng_seed: int, examples: int) -> list[dict]:
    """schemathesis' requests for every operation of the published schema: [{method, path, body}]."""
    import json
    r = subprocess.run([sys.executable, "-c", DRAW, f"{url}/openapi.json", str(rng_seed), str(examples)],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _prompt_texts(body) -> list[str]:
    if not isinstance(body, dict):
        return []
    p = body.get("prompt", body.get("question"))
    out = [p] if isinstance(p, str) else [x for x in p if isinstance(x, str)] if isinstance(p, list) else []
    for m in body.get("messages") or []:
        if isinstance(m, dict) and isinstance(m.get("content"), str):
            out.append(m["content"])
    return out


# Edges random draws rarely reach: over the context in tokens (256 on the tiny model), over it only with
# max_tokens, non-ASCII and control text, lone surrogates, empty strings, streaming.
LONG = "7 * 8 = 56\n" * 60                       # ~420 tokens, 660 characters (under the 8000-character limit)
FUZZ_EDGES = {
    "/v1/completions": [{"prompt": LONG}, {"prompt": "1 + " * 100, "max_tokens": 200}, {"prompt": ["ok", LONG]},
                        {"prompt": "ünïcødé ✓ 数学 😀 " * 20}, {"prompt": "\x00\u200b\ufeff"}, {"prompt": "\ud800"},
                        {"prompt": ""}, {"prompt": [""]}, {"prompt": LONG, "stream": True},
                        {"prompt": "x", "stop": ["\ud800"]}],
    "/v1/chat/completions": [{"messages": [{"role": "user", "content": LONG}]},
                             {"messages": [{"role": "user", "content": "数学 " * 150}]},
                             {"messages": [{"role": "user", "content": "1 + " * 100}], "max_tokens": 200},
                             {"messages": [{"role": "user", "content": ""}]}, {"messages": []},
                             {"messages": [{"role": "user", "content": LONG}], "stream": True},
                             {"messages": [{"role": "assistant", "content": "x"}]}],
    "/v1/solve": [{"question": LONG}, {"question": "ünïcødé " * 10, "n": 2}, {"question": "\ud800"}],
    "/v1/score": [{"question": LONG, "solution": LONG * 5}, {"question": "数学", "steps": ["∑", "😀"]}],
}


def test_openapi_fuzz_never_5xx(api):
    """Requests drawn by schemathesis from the published OpenAPI schema from a fixed seed (see above), plus
    the fixed edge cases: no response is a server error. The same seed draws the same requests."""
    api, auth = api
    rng_seed, examples = _fuzz_seed(), int(os.environ.get("SITF_FUZZ_EXAMPLES", "25"))
    drawn = draw_cases(api, rng_seed, examples)
    assert draw_cases(api, rng_seed, examples) == drawn            # deterministic: CI is not a coin toss
    edges = [{"method": "POST", "path": p, "body": b} for p, bodies in FUZZ_EDGES.items() for b in bodies]
    seen = {"status": {}, "non_ascii": 0, "long": 0}
    s = auth
    for i, case in enumerate(drawn + edges):
        kw = {} if case["body"] is None else {"json": case["body"]}
        r = s.request(case["method"], api + case["path"], timeout=120, **kw)
        seen["status"][r.status_code] = seen["status"].get(r.status_code, 0) + 1
        texts = _prompt_texts(case["body"])
        seen["non_ascii"] += i < len(drawn) and any(not t.isascii() for t in texts)
        seen["long"] += any(len(t) > 300 for t in texts)
        assert r.status_code < 500, (case, r.status_code, r.text[:300], f"SITF_FUZZ_SEED={rng_seed}")
    print(f"\nschema fuzz (SITF_FUZZ_SEED={rng_seed}, {examples} per operation): {len(drawn)} drawn requests "
          f"({seen['non_ascii']} with non-ASCII text) + {len(edges)} edge cases; status counts {seen['status']}")
    assert len(drawn) >= 50 and seen["non_ascii"] >= 1
    assert seen["long"] >= 8 and seen["status"].get(400, 0) >= 8   # the context limit was really reached
