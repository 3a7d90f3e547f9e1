"""Request bodies, as OpenAI documents them, with genloom's limits; a field out of range is a 400 naming it.

Unknown fields are ignored (as OpenAI and vLLM do), so a client that sends `user` or `metadata` still works; OpenAI
fields that would change the result and that genloom does not implement (`suffix`, tools) are refused by name
instead of being silently dropped.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_N = 16  # completions per prompt
MAX_PROMPTS = 32  # prompts in one completions request
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300  # tokens one request may bias, OpenAI's limit
MAX_IMAGES = 8
MAX_TRANSLATIONS = 64


# OpenAI parameters that change what comes back; present with a non-trivial value -> 400 naming them.
UNSUPPORTED = ("suffix", "tools", "tool_choice", "functions", "function_call",
               "response_format", "modalities", "audio", "prediction")


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    def unsupported(self) -> str | None:
        """The first OpenAI parameter given that genloom does not implement, if any."""
        extra = self.model_extra or {}
        for name in UNSUPPORTED:
            value = extra.get(name)
            trivial = value in (None, {}, [], "", "none", "auto") or (
                name == "response_format" and isinstance(value, dict) and value.get("type") == "text")
            if name in extra and not trivial:
                return name
        return None


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = Field(None)
    seed: int | None = Field(None, ge=0, lt=2**63)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    # token id (as a JSON key, a string) -> bias in [-100, 100]; the ids are checked against the model's vocabulary
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class CompletionRequest(_Sampling):
    # A text, texts, a token array or token arrays, as OpenAI takes them (harnesses that tokenise send ids).
    prompt: str | list[str] | list[int] | list[list[int]] = Field(..., min_length=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    # Sample best_of candidates per prompt and return the n of highest total log-probability (never streamed).
    best_of: int | None = Field(None, ge=1, le=MAX_N)

    def prompt_list(self) -> list[str] | list[list[int]]:
        """The prompts, one text or token array each."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [self.prompt]
        return self.prompt  # type: ignore[return-value]


class ContentPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: str
    content: str | list[ContentPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class TokenizeRequest(_Body):
    """vLLM's /tokenize: a prompt, or chat messages rendered by the model's template."""

    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_generation_prompt: bool = True  # with messages: end with the assistant's turn opening, as chat sends it


class DetokenizeRequest(_Body):
    model: str
    tokens: list[int]


class ImageRequest(_Body):
    model: str
    prompt: str = Field(..., min_length=1, max_length=4000)
    n: int = Field(1, ge=1, le=MAX_IMAGES)
    size: str | None = None  # "WxH"; must be the model's own size
    response_format: Literal["b64_json", "url"] = "b64_json"
    # genloom's extra fields (sent with the openai client's extra_body)
    seed: int | None = Field(None, ge=0, lt=2**62)
    guidance_scale: float = Field(3.0, ge=0.0, le=50.0)
    negative_prompt: str = Field("", max_length=4000)
    steps: int | None = Field(None, ge=1)
    rerank: int | None = Field(None, ge=1, le=64)
    temperature: float = Field(1.0, ge=0.0, le=2.0)


class TranslationRequest(_Body):
    model: str
    text: str | list[str] = Field(..., min_length=1)
    source_language: str | None = None
    target_language: str | None = None
    beam_size: int = Field(4, ge=1, le=16)

    def texts(self) -> list[str]:
        return [self.text] if isinstance(self.text, str) else list(self.text)
