"""The Ray Serve API over a trained run: real HTTP calls, every kind of bad request, auth."""
from __future__ import annotations

import json

import pytest
import requests

from conftest import free_port

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def api(mini_run, ray_session):
    from ray import serve

    from sitf_ray.serve import start
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
    assert body["object"] == "text_completion" and len(body["choices"]) == 4
    assert {c["prompt_index"] for c in body["choices"]} == {0, 1}
    greedy = s.post(f"{url}/v1/completions", json={"prompt": q, "max_tokens": 32}, timeout=60).json()
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
