"""The Ray Serve API over a trained run: real HTTP calls, the real `openai` client (chat, streaming), every
kind of bad request with the field named, context overflow counted in tokens, auth."""
from __future__ import annotations

import json

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
