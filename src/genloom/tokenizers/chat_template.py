"""Chat templates: how a conversation becomes one text, and which of its tokens the model learns to write.

- ChatML (`<|im_start|>role\\n … <|im_end|>\\n`, generation prompt `<|im_start|>assistant\\n`) is the built-in
  format; any Hugging Face `chat_template` (a Jinja template over `messages` and `add_generation_prompt`) works.
- Templates are rendered in Jinja's `ImmutableSandboxedEnvironment`, as transformers does: a template comes
  with a checkpoint, which may come from anyone, and the sandbox keeps it from reaching Python internals.
- One rendering function (`ChatFormat.render`) serves training, `genloom chat`, evaluation and the HTTP server,
  so the format a model was trained on and the one it is prompted with cannot drift apart.
- `encode_chat` finds the assistant turns without knowing the template: it renders the conversation up to each
  assistant turn with the generation prompt, and through that turn; the difference is what the assistant
  wrote, closing token included (so the model learns to stop), and the trailing newline after it excluded.
- Saved as `tokenizer_config.json` beside the tokenizer with the Hugging Face keys (`chat_template`,
  `eos_token`, `additional_special_tokens`), so `transformers` reads the same template from an export.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genloom.errors import GenloomError
from genloom.tokenizers.chat_tools import TOOL_TOKENS, check_tools, tool_output_mask

if TYPE_CHECKING:
    from genloom.tokenizers.base import Tokenizer

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ROLES = ("system", "user", "assistant")
CONFIG_FILE = "tokenizer_config.json"

# The ChatML template as Hugging Face models publish it (e.g. Qwen, SmolLM), byte for byte.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

Message = Mapping[str, str]


def check_messages(messages: Sequence[object], where: str = "conversation") -> list[dict[str, str]]:
    """The messages as plain dicts; a one-line GenloomError naming `where` for an unknown role or a content
    that is not a string."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise GenloomError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects")
    checked = []
    for i, message in enumerate(messages, 1):
        if not isinstance(message, Mapping):
            raise GenloomError(f"{where}: message {i} is not an object with \"role\" and \"content\"")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise GenloomError(f"{where}: message {i} has role {role!r}; choose from: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise GenloomError(f"{where}: message {i} ({role}) has a content that is not a string: {content!r}")
        checked.append({"role": str(role), "content": content})
    return checked


@dataclass(frozen=True)
class ChatFormat:
    """A chat template and the special tokens it writes."""

    template: str  # Jinja, over `messages` and `add_generation_prompt` (the Hugging Face convention)
    end_token: str | None = IM_END  # ends an assistant turn: generation stops there (None: the tokenizer's eos)
    special_tokens: tuple[str, ...] = (IM_START, IM_END)  # tokens the tokenizer must have as single ids
    tools: tuple[str, ...] = ()  # tools the assistant calls while it answers (`chat_tools`: "calculator")

    def with_tools(self, tools: Sequence[str]) -> ChatFormat:
        """This format, also calling `tools`, with their special tokens."""
        tools = check_tools([*self.tools, *tools])
        tokens = [t for tool in tools for t in TOOL_TOKENS[tool]]
        return replace(self, special_tokens=tuple(dict.fromkeys([*self.special_tokens, *tokens])), tools=tools)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The conversation as the model reads it; with `add_generation_prompt`, ending where the assistant's
        answer begins."""
        try:
            return _compile(self.template).render(
                messages=list(messages), add_generation_prompt=add_generation_prompt,
                eos_token=self.end_token or "", bos_token="",
            )
        except GenloomError:
            raise
        except Exception as e:  # a template error (syntax, sandbox violation, undefined) is the template's fault
            raise GenloomError(f"cannot render the chat template: {type(e).__name__}: {e}") from None

    def check_tokenizer(self, tokenizer: Tokenizer, where: str) -> None:
        """A one-line error when the tokenizer lacks a token this format writes (a chat checkpoint whose
        tokenizer files lost its special tokens)."""
        missing = [t for t in self.special_tokens if t not in tokenizer.special_tokens]
        if missing:
            raise GenloomError(f"{where}: the chat template needs the special token(s) {', '.join(missing)}, "
                               "which the tokenizer lacks; its tokenizer files do not belong to this chat model")

    def end_id(self, tokenizer: Tokenizer) -> int | None:
        """The id generation stops at: the end-of-turn token, else the tokenizer's end-of-text."""
        if self.end_token is not None and self.end_token in tokenizer.special_tokens:
            return tokenizer.token_id(self.end_token)
        return tokenizer.eos_id

    def save(self, directory: Path) -> None:
        record = {"chat_template": self.template, "additional_special_tokens": list(self.special_tokens)}
        if self.end_token is not None:
            record["eos_token"] = self.end_token
        if self.tools:
            record["genloom_tools"] = list(self.tools)
        (directory / CONFIG_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, directory: Path) -> ChatFormat | None:
        """The chat format saved in `directory` (genloom or Hugging Face `tokenizer_config.json`, or a
        `chat_template.jinja`), or None when it has none."""
        path = directory / CONFIG_FILE
        record: dict[str, Any] = {}
        if path.is_file():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise GenloomError(f"{path} is not valid JSON: {e}") from None
            record = loaded if isinstance(loaded, dict) else {}
        template = record.get("chat_template")
        jinja_file = directory / "chat_template.jinja"  # where transformers >= 4.49 saves it
        if template is None and jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        if template is None:
            return None
        if not isinstance(template, str):  # transformers also allows a list of named templates
            raise GenloomError(f"{path}: \"chat_template\" must be one template string")
        specials = tuple(_token_text(t) for t in record.get("additional_special_tokens", []) or [])
        end = record.get("eos_token")
        tools = record.get("genloom_tools", [])
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            raise GenloomError(f"{path}: \"genloom_tools\" must be a list of tool names")
        chat_format = cls(template, _token_text(end) if end is not None else None, tuple(t for t in specials if t))
        return chat_format.with_tools(tools) if tools else chat_format


CHATML = ChatFormat(CHATML_TEMPLATE)


def _token_text(token: object) -> str:
    """A token as tokenizer_config.json writes it: a string, or an AddedToken record {"content": ...}."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else ""


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise GenloomError(f"the chat template refused the conversation: {message}")

    # trim_blocks / lstrip_blocks as transformers sets them, so a template renders here as it does there.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise GenloomError(f"the chat template is not valid Jinja: {e}") from None


def add_chat_tokens(tokenizer: Tokenizer, chat_format: ChatFormat = CHATML) -> list[int]:
    """Give `tokenizer` the format's special tokens (appended after every existing id) and the format itself;
    the ids of the tokens. A model on this tokenizer needs its vocabulary resized to `tokenizer.vocab_size`."""
    ids = tokenizer.add_special_tokens(chat_format.special_tokens)
    tokenizer.chat_format = chat_format
    return ids


def encode_chat(tokenizer: Tokenizer, chat_format: ChatFormat, messages: Sequence[Message]) -> tuple[
        list[int], list[bool]]:
    """Token ids of the rendered conversation and, per token, whether it is the assistant's (the loss mask; a
    calculator result inside an answer is not: see `chat_tools`).

    A GenloomError when the template renders no assistant span for a conversation with assistant turns, or does
    not render conversations incrementally (each turn appended after the ones before), which the span search
    relies on; every published chat template does.
    """
    full = chat_format.render(messages)
    pieces: list[tuple[str, bool]] = []  # (text, written by the assistant)
    done = 0  # characters of `full` already in `pieces`
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = chat_format.render(messages[:i], add_generation_prompt=True)
        through = chat_format.render(messages[: i + 1])
        if not (full.startswith(through) and through.startswith(prompt) and len(prompt) >= done):
            raise GenloomError("the chat template does not render a conversation turn by turn, so its assistant "
                               "turns cannot be found")
        span = through[len(prompt) :]
        if chat_format.end_token and chat_format.end_token in span:
            # Through the closing token: the newline after it is the template's, and never generated.
            span = span[: span.rindex(chat_format.end_token) + len(chat_format.end_token)]
        pieces += [(full[done : len(prompt)], False), (span, True)]
        done = len(prompt) + len(span)
    pieces.append((full[done:], False))
    if any(m["role"] == "assistant" for m in messages) and not any(text for text, mine in pieces if mine):
        raise GenloomError("the chat template renders no assistant span: the assistant's turns leave no text")
    ids: list[int] = []
    mask: list[bool] = []
    for text, mine in pieces:
        if text:
            piece = tokenizer.encode(text)
            ids += piece
            # A calculator's result is fed in by the decoder, never written by the model: no loss on it.
            mask += [mine and not tool for tool in tool_output_mask(piece, tokenizer)]
    return ids, mask


def encode_prompt(tokenizer: Tokenizer, chat_format: ChatFormat, messages: Sequence[Message],
                  add_generation_prompt: bool = True) -> list[int]:
    """The ids a model continues to answer `messages`: the conversation with the generation prompt (or without it,
    the conversation alone)."""
    return tokenizer.encode(chat_format.render(messages, add_generation_prompt=add_generation_prompt))
