"""Request bodies of the serving API (pydantic), their limits, and how chat messages become a prompt.

Every body forbids unknown fields and is checked before anything reaches an engine, so a bad request
gets 422 naming the field (`prompt`, `messages.0.content`, `n`, ...). Token-level limits (prompt plus
max_tokens against the model's context) need the tokenizer and are checked by the server (serve.py).
Field names and defaults follow OpenAI's completions and chat completions API
(https://platform.openai.com/docs/api-reference/chat), so the `openai` client works unchanged.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class ServeLimits(BaseModel):
    max_n: int = 16
    max_tokens: int = 512
    max_prompts: int = 32
    max_messages: int = 64
    max_body_bytes: int = 64 * 1024
    max_prompt_chars: int = 8000


LIMITS = ServeLimits()


def _text(v: str, field: str) -> str:
    """A non-empty string within the character limit that UTF-8 can carry (JSON admits lone surrogates)."""
    if not v:
        raise ValueError(f"{field} must not be empty")
    if len(v) > LIMITS.max_prompt_chars:
        raise ValueError(f"{field} must be at most {LIMITS.max_prompt_chars} characters")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field} is not valid Unicode (lone surrogate)") from None
    return v


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Req):
    include_usage: bool = False


class _Sampling(_Req):
    """Fields shared by completions and chat (OpenAI names and defaults)."""
    model: Optional[str] = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=LIMITS.max_n)
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = Field(None, max_length=256)   # OpenAI's end-user id; accepted, not used

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > 4 or any(not s for s in items):
            raise ValueError("stop: at most 4 non-empty strings")
        for s in items:
            _text(s, "stop")
        return v

    # field validators that look at earlier fields (declared above them), so the error names the field
    @field_validator("n")
    @classmethod
    def _greedy_n(cls, v, info: ValidationInfo):
        # greedy copies are identical; vLLM refuses them
        if v > 1 and info.data.get("temperature") == 0:
            raise ValueError("n > 1 needs temperature > 0 (greedy samples are identical)")
        return v

    @field_validator("stream_options")
    @classmethod
    def _stream_options(cls, v, info: ValidationInfo):
        if v is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed with stream: true")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]
    max_tokens: int = Field(16, ge=1, le=LIMITS.max_tokens)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        items = [v] if isinstance(v, str) else v
        if not items:
            raise ValueError("prompt must not be empty")
        if len(items) > LIMITS.max_prompts:
            raise ValueError(f"at most {LIMITS.max_prompts} prompts per request")
        for p in items:
            _text(p, "prompt")
        return v

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(_Req):
    type: Literal["text"]
    text: str


class ChatMessage(_Req):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: Optional[str] = Field(None, max_length=64)

    @field_validator("content")
    @classmethod
    def _content(cls, v):
        # text parts are joined: the models served here read text only
        text = v if isinstance(v, str) else "".join(p.text for p in v)
        return _text(text, "content")


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=LIMITS.max_messages)
    max_tokens: Optional[int] = Field(None, ge=1, le=LIMITS.max_tokens)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=LIMITS.max_tokens)

    @field_validator("messages")
    @classmethod
    def _messages(cls, v):
        if not any(m.role == "user" for m in v):
            raise ValueError("messages must contain a user message")
        if sum(len(m.content) for m in v) > LIMITS.max_prompt_chars:
            raise ValueError(f"messages: at most {LIMITS.max_prompt_chars} characters of content in all")
        return v

    @field_validator("max_completion_tokens")
    @classmethod
    def _one_max(cls, v, info: ValidationInfo):
        if v is not None and info.data.get("max_tokens") is not None:
            raise ValueError("give max_completion_tokens or max_tokens (its older name), not both")
        return v

    def limit(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class SolveRequest(_Req):
    question: str = Field(..., min_length=1, max_length=LIMITS.max_prompt_chars)
    n: int = Field(8, ge=1, le=LIMITS.max_n)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    max_tokens: Optional[int] = Field(None, ge=1, le=LIMITS.max_tokens)   # None: as many as fit, <= 256
    return_candidates: bool = False      # also return every candidate with its reward ("all")

    @field_validator("question")
    @classmethod
    def _q(cls, v):
        return _text(v, "question")


class ScoreRequest(_Req):
    question: str = Field(..., min_length=1, max_length=LIMITS.max_prompt_chars)
    solution: Optional[str] = Field(None, max_length=4 * LIMITS.max_prompt_chars)
    steps: Optional[list[str]] = Field(None, max_length=64)

    @field_validator("question")
    @classmethod
    def _q(cls, v):
        return _text(v, "question")

    @field_validator("steps")
    @classmethod
    def _steps(cls, v):
        if v is not None and (not v or any(not isinstance(s, str) or not s.strip() for s in v)):
            raise ValueError("steps must be a non-empty list of non-empty strings")
        return v


# ------------------------------------------------------------------------------------ chat -> prompt

def task_prompt(task, text: str) -> str:
    """The task's prompt for a free-text question. The row carries the text under every key a task's
    prompt reads (`question`; `prompt` for HumanEval; MBPP's shown tests are none)."""
    return task.prompt({"question": text, "prompt": text, "test_list": []})


def render_task_chat(task, messages: list[ChatMessage]) -> str:
    """Messages in the task's own prompt format, for models without a chat template.

    System/developer text comes first; each user turn is the task's prompt for that text and an
    assistant turn is the answer that followed it (earlier turns read as worked examples). The last
    message must be the user's: the model answers it. Raises ValueError otherwise.
    """
    if messages[-1].role != "user":
        raise ValueError("the last message must be the user's (this model has no chat template)")
    head = "\n\n".join(m.content for m in messages if m.role in ("system", "developer"))
    turns = []
    for m in messages:
        if m.role == "user":
            turns.append(task_prompt(task, m.content))
        elif m.role == "assistant":
            turns.append(m.content.rstrip("\n") + "\n\n")
    return (head + "\n\n" if head else "") + "".join(turns)
