"""A conversation with a chat model: history, the context window, streaming replies, saving and loading.

- Each reply renders the whole history through the model's own chat template (the one training used) with the
  generation prompt, and decodes until the template's end-of-turn token; a model trained with the calculator
  calls it (`tokenizers.chat_tools`), and its calls stay in the history as training wrote them.
- History is kept within the context: the oldest user/assistant turns are dropped (the system message stays)
  until the prompt leaves room for a reply, and the reply says how many were dropped.
- A session saves as one line `{"messages": [...]}`: the format `train chat --data` reads, so a conversation
  worth keeping is training data as it stands.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from genloom.data.conversations import read_message_lines
from genloom.errors import GenloomError
from genloom.generate.lm import generate
from genloom.generate.sampling import SamplingConfig
from genloom.models.gpt import GPT
from genloom.outputs import write_text_atomically
from genloom.tokenizers import Tokenizer
from genloom.tokenizers.chat_template import ChatFormat, encode_prompt
from genloom.tokenizers.chat_tools import decoder_tool


def chat_format_of(tokenizer: Tokenizer, where: str) -> ChatFormat:
    """The tokenizer's chat format, or a one-line error pointing to `genloom train chat`."""
    if tokenizer.chat_format is None:
        raise GenloomError(f"{where} has no chat template; make a chat model from it with "
                           f"`genloom train chat --base {where} --out RUN`")
    return tokenizer.chat_format


@dataclass
class Reply:
    text: str
    dropped_turns: int  # old turns left out of the prompt so that it fits the context
    context_limited: bool  # the reply stopped because the context was full


class ChatSession:
    """The messages so far, and the model that answers them."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, cfg: SamplingConfig, where: str = "this model",
                 system: str | None = None) -> None:
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.chat_format = chat_format_of(tokenizer, where)
        self.system = system
        self.turns: list[dict[str, str]] = []  # user and assistant messages, oldest first

    @property
    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.turns

    def reset(self) -> None:
        self.turns = []

    def reply(self, user_text: str, on_text: Callable[[str], None] | None = None) -> Reply:
        """Answer `user_text`, streaming the answer's text to `on_text` as it is final."""
        system = self.messages[: len(self.messages) - len(self.turns)]
        turns = [*self.turns, {"role": "user", "content": user_text}]
        context = self.model.config.context_length
        room = min(self.cfg.max_new_tokens, max(1, context // 4))  # tokens a reply may at least have
        dropped = 0
        while (size := len(encode_prompt(self.tokenizer, self.chat_format, system + turns))) + room > context:
            if len(turns) == 1:
                raise GenloomError(f"this message makes a prompt of {size} tokens, and the model's context of "
                                   f"{context} must leave room for a reply; write less (or drop a long system message)")
            turns = turns[2:]  # the oldest user turn and its answer
            dropped += 1
        prompt = self.chat_format.render(system + turns, add_generation_prompt=True)
        stream = (lambda _row, piece: on_text(piece)) if on_text is not None else None
        completion = generate(self.model, self.tokenizer, [prompt], self.cfg, on_text=stream,
                              eos_id=self.chat_format.end_id(self.tokenizer), tool=decoder_tool(self.tokenizer))[0]
        self.turns = [*turns, {"role": "assistant", "content": completion.text}]
        return Reply(completion.text, dropped, completion.context_limited)

    def save(self, path: Path) -> None:
        """The conversation as one JSONL line of messages (what `train chat --data` and `--load` read)."""
        write_text_atomically(path, json.dumps({"messages": self.messages}, ensure_ascii=False) + "\n")

    def load(self, path: Path) -> None:
        """Continue the conversation saved in `path` (its last line, when it holds several)."""
        messages = read_message_lines(path)[-1][2]
        self.system = messages[0]["content"] if messages[0]["role"] == "system" else None
        self.turns = [m for m in messages if m["role"] != "system"]
