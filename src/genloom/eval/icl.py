"""In-context learning, measured: few-shot accuracy by number of shots, and two loss probes of the mechanism.

- `few_shot_accuracy`: GPT-3-style evaluation (Brown et al. 2020) on the synthetic families of
  genloom.data.icl: k solved examples in the prompt, no weight update, greedy decoding, exact match of the output
  up to the end of the line. The prompts depend only on (seed, family, k), so every model sees the same ones.
  `few_shot_correct` gives its verdict per prompt, for breakdowns of a family's prompts.
- `max_shots_that_fit`: the largest k whose prompts (and answers) fit a model's context.
- `induction_score`: loss on the first and on the second copy of a repeated random token sequence [r ; r]
  (Olsson et al. 2022). Only a model that looks back for the earlier occurrence of the current token and copies
  what followed it (an induction head) predicts the second copy well; no model can predict the first.
- `icl_score`: Olsson et al.'s "in-context learning score", the loss of a late token minus that of an early one
  in real text windows; negative means context is used.
- `mapping_induction_score`: the same question asked in the format of builtin:icl's fresh symbol mappings: the
  loss on an output letter whose input appeared in an earlier line of the prompt (an induction head copies what
  followed it) against the loss on one whose input is new (at best 1 in the ~20 letters not used yet).
- `icl_probe_metrics`: the probes with defaults scaled to a model's context, cheap enough to log at every
  validation (~0.2 s for a 4-layer, 128-dim model with a context of 256 on a CPU).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genloom.data.icl import FewShotPrompt, few_shot_prompt, few_shot_prompts
from genloom.errors import GenloomError, UnencodableTextError
from genloom.generate import SamplingConfig, generate
from genloom.models.gpt import GPT
from genloom.tokenizers import Tokenizer

# icl_probe_metrics: repeated random sequences of at most this length (each row holds two copies), and this many
# rows and text windows. Small, so the probes cost a fraction of a validation pass.
PROBE_SEQ_LEN = 32
PROBE_ROWS = 16
MAPPING_PROBE_SHOTS = 15  # lines of a mapping probe prompt: 6 names, so most lines repeat an earlier input


@contextmanager
def _evaluating(model: GPT) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd; the trainer's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _needed_tokens(tokenizer: Tokenizer, item: FewShotPrompt) -> int:
    # The answer and the newline after it must fit too: a model cut off by the context after a correct prefix
    # would be scored on text it was not allowed to finish (or credited for an answer it would have continued).
    return len(tokenizer.encode(item.prompt)) + len(tokenizer.encode(item.answer)) + 1


def _fits(tokenizer: Tokenizer, families: Sequence[str], k: int, context_length: int, n: int, seed: int) -> bool:
    return all(
        _needed_tokens(tokenizer, item) <= context_length
        for family in families for item in few_shot_prompts(family, k, n, seed)
    )


def max_shots_that_fit(
    tokenizer: Tokenizer, families: Sequence[str], context_length: int, n: int = 100, seed: int = 0
) -> int:
    """The largest k for which all `n` evaluation prompts of every family, answer included, fit `context_length`
    tokens (-1 when not even the bare query does). These are the prompts `few_shot_accuracy` uses."""
    fit = -1
    # Each shot adds at least one token, so a k beyond the context never fits: the scan ends.
    for k in range(context_length + 1):
        if not _fits(tokenizer, families, k, context_length, n, seed):
            break
        fit = k
    return fit


def _check_shots(tokenizer: Tokenizer, families: Sequence[str], shots: Sequence[int], context: int, n: int,
                 seed: int) -> None:
    for k in sorted(shots, reverse=True):  # the largest k is the one most likely not to fit
        if not _fits(tokenizer, families, k, context, n, seed):
            fit = max_shots_that_fit(tokenizer, families, context, n, seed)
            most = f"at most {fit} shots fit" if fit >= 0 else "not even a prompt with no shots fits"
            raise GenloomError(f"--shots {k} does not fit the context of {context} tokens: {most}")


def few_shot_accuracy(
    model: GPT,
    tokenizer: Tokenizer,
    families: Sequence[str],
    shots: Sequence[int],
    n: int = 100,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, dict[int, float]]:
    """Exact-match accuracy (0..1) per family per number of shots k: {family: {k: accuracy}}.

    Greedy decoding up to the end of the line; the output must equal the answer exactly. The same `n` prompts per
    (family, k) for every model with the same seed (`genloom.data.icl.few_shot_prompts`). A GenloomError when
    some k does not fit the model's context, naming how many shots do.
    """
    if not families or not shots:
        raise GenloomError("few-shot evaluation needs at least one family and one number of shots")
    if batch_size < 1:
        raise GenloomError(f"batch_size ({batch_size}) must be positive")
    if any(k < 0 for k in shots):
        raise GenloomError(f"the numbers of shots must be >= 0, got {list(shots)}")
    _check_shots(tokenizer, families, shots, model.config.context_length, n, seed)
    results: dict[str, dict[int, float]] = {}
    for family in families:
        results[family] = {}
        for k in shots:
            correct = few_shot_correct(model, tokenizer, few_shot_prompts(family, k, n, seed), batch_size)
            results[family][k] = sum(correct) / len(correct)
    return results


def few_shot_correct(model: GPT, tokenizer: Tokenizer, items: Sequence[FewShotPrompt], batch_size: int = 32
                     ) -> list[bool]:
    """Whether the model answers each prompt exactly: greedy decoding up to the end of the line, as
    `few_shot_accuracy` scores (for a breakdown of its prompts by some property of theirs)."""
    correct: list[bool] = []
    with _evaluating(model):
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            # Two tokens past the longest answer: room for the newline, and for a wrong longer output.
            longest = max(len(tokenizer.encode(item.answer)) for item in batch)
            cfg = SamplingConfig(max_new_tokens=longest + 2, temperature=0.0, stop=["\n"])
            completions = generate(model, tokenizer, [item.prompt for item in batch], cfg)
            correct += [c.text == item.answer for c, item in zip(completions, batch, strict=True)]
    return correct


def _token_losses(model: GPT, tokens: Tensor) -> Tensor:
    """Next-token losses (B, T - 1): entry [b, i - 1] is the loss of token i given tokens 0..i-1."""
    tokens = tokens.to(model.token_embedding.weight.device)
    logits = model(tokens[:, :-1]).float()  # (B, T - 1, V)
    return F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")  # (B, T - 1)


def induction_score(
    model: GPT, vocab_size: int, seq_len: int, n_seqs: int = 16, seed: int = 0, source: np.ndarray | None = None,
) -> tuple[float, float]:
    """Loss on the first and on the second occurrence of a repeated token sequence.

    Rows are [r ; r], (n_seqs, 2 * seq_len): r uniform random ids below `vocab_size`, or, with `source`, random
    stretches of that text (its validation split). The first copy is scored on its tokens 1..L-1 (token 0 has no
    context), the second on its tokens 1..L-1 too (positions L+1..2L-1): the second copy's token 0 follows r's
    last token, which has no earlier occurrence to copy from. Returns (loss on the first copy, loss on the second
    copy), mean nats per token: uniform ids cost about ln(vocab_size) on the first copy, and a model with
    induction heads gets the second copy nearly free.

    Why real text for the trainer's probe: a character model's strong priors put uniformly random characters so
    far off its distribution (14 nats a token against ln 65 = 4.2, measured on a builtin:icl model) that the
    second copy is no easier either; a repeated stretch of real text is as unpredictable from its own first copy
    as the text is, and the second copy is predictable only by looking back at it.
    """
    if seq_len < 2 or n_seqs < 1 or vocab_size < 2:
        raise GenloomError(f"need seq_len ({seq_len}) >= 2, n_seqs ({n_seqs}) >= 1 and vocab_size ({vocab_size}) >= 2")
    context = model.config.context_length
    if 2 * seq_len > context:
        raise GenloomError(f"two copies of {seq_len} tokens do not fit the model's context of {context}")
    generator = torch.Generator().manual_seed(seed)
    if source is not None and len(source) > seq_len:
        starts = torch.randint(len(source) - seq_len, (n_seqs,), generator=generator).tolist()
        r = torch.from_numpy(np.stack([np.asarray(source[s : s + seq_len], dtype=np.int64) for s in starts]))
    else:
        r = torch.randint(vocab_size, (n_seqs, seq_len), generator=generator)  # (B, L)
    with _evaluating(model):
        losses = _token_losses(model, torch.cat([r, r], dim=1))  # (B, 2L - 1); column i - 1 scores token i
    first = losses[:, : seq_len - 1]  # tokens 1..L-1
    second = losses[:, seq_len:]  # tokens L+1..2L-1
    return float(first.mean()), float(second.mean())


def mapping_induction_score(model: GPT, tokenizer: Tokenizer, n_prompts: int = PROBE_ROWS, seed: int = 0
                            ) -> tuple[float, float] | None:
    """(loss on first-seen outputs, loss on repeated outputs), mean nats per output letter, over `n_prompts`
    fresh-mapping prompts of MAPPING_PROBE_SHOTS lines (fewer if the context is short) and their answers.

    A line is "kqzR": at its output letter the model has just read the name "kqz"; if "kqz" began an earlier line
    of the prompt, an induction head finds the earlier `z` (no other name has that letter) and copies what
    followed (the loss falls to ~0 once one forms), and otherwise nothing in the prompt tells the letter. None when
    the tokenizer does not spell these prompts one character a token (a BPE merges "zR"), or the context holds
    fewer than 2 lines.

    Why beside `induction_score`: a model trained on builtin:icl learns this lookup without learning to copy an
    arbitrary repeated stretch of text (measured: 100 % few-shot mapping accuracy while the repeated-stretch gain
    stayed at -0.3 nats), so the stretch probe alone misses the phase change the task shows.
    """
    # A line is at most a 3-letter name, its output letter and a newline; the query's line has no newline.
    shots = min(MAPPING_PROBE_SHOTS, (model.config.context_length - 4) // 5)
    if shots < 2:
        return None
    rng = random.Random(f"genloom-icl-probe:{seed}")
    texts = [item.prompt + item.answer for item in (few_shot_prompt("mapping", shots, rng) for _ in range(n_prompts))]
    try:
        ids = [tokenizer.encode(text) for text in texts]
    except UnencodableTextError:
        return None
    if any(len(row) != len(text) for row, text in zip(ids, texts, strict=True)):
        return None
    output_at, repeated = zip(*(_mapping_outputs(text) for text in texts), strict=True)  # (B, shots + 1) each
    # Rows differ in length: padded at the end, which a causal model's earlier predictions cannot see.
    width = max(map(len, ids))
    padded = torch.tensor([row + [0] * (width - len(row)) for row in ids])  # (B, width)
    with _evaluating(model):
        losses = _token_losses(model, padded).cpu()  # (B, width - 1); column j - 1 scores token j
    outputs = losses.gather(1, torch.tensor(output_at) - 1)  # (B, shots + 1): the loss of each line's output
    seen = torch.tensor(repeated)
    return float(outputs[~seen].mean()), float(outputs[seen].mean())


def _mapping_outputs(text: str) -> tuple[list[int], list[bool]]:
    """Per line of a mapping prompt: the index of its output letter in `text`, and whether an earlier line had the
    same name."""
    output_at, repeated, names, end = [], [], set(), -1
    for line in text.split("\n"):
        end += len(line) + 1  # the index of the line's newline, one past its output letter
        output_at.append(end - 1)
        repeated.append(line[:-1] in names)
        names.add(line[:-1])
    return output_at, repeated


def icl_score(model: GPT, tokens: Tensor, early: int, late: int, width: int = 1) -> float:
    """Olsson et al. (2022): loss at token index `late` minus loss at token index `early`, averaged over the batch
    `tokens` (B, T) of real text windows; negative means later tokens are predicted better thanks to context.

    The loss "at token index i" is that of predicting tokens[:, i] from tokens[:, :i]. With `width` > 1 each side
    is the mean over a band of tokens, early..early+width-1 and late-width+1..late: with few windows a single
    token's loss mostly says which character sits there (a newline is easy, an answer's digit hard), a band
    averages that out. Needs 1 <= early, early + width <= late - width + 1 and late < T.
    """
    if tokens.ndim != 2:
        raise GenloomError(f"tokens must be a (B, T) batch of windows, got shape {tuple(tokens.shape)}")
    t = tokens.shape[1]
    if width < 1 or not 1 <= early <= early + width - 1 < late - width + 1 <= late < t:
        raise GenloomError(
            f"need 1 <= early ({early}), bands of width ({width}) >= 1 that do not overlap, and late ({late}) < the "
            f"window length ({t})"
        )
    with _evaluating(model):
        # Only tokens 0..late are needed: later ones cannot change earlier predictions in a causal model.
        losses = _token_losses(model, tokens[:, : late + 1].long())  # (B, late); column i - 1 scores token i
    late_loss = losses[:, late - width : late].mean(dim=1)  # (B,) tokens late-width+1..late
    early_loss = losses[:, early - 1 : early - 1 + width].mean(dim=1)  # (B,) tokens early..early+width-1
    return float((late_loss - early_loss).mean())


def icl_probe_metrics(model: GPT, val_tokens: np.ndarray, vocab_size: int, tokenizer: Tokenizer | None = None
                      ) -> dict[str, float]:
    """The probes with fixed seeds and defaults scaled to the model's context, for logging at every validation.

    Keys: induction_first_loss, induction_second_loss, induction_gain (first - second; high once induction heads
    form), icl_score (negative once context helps); with a `tokenizer` that spells the mapping prompts a character
    a token, also mapping_first_loss, mapping_repeat_loss and mapping_gain (first - repeat;
    `mapping_induction_score`). Induction: PROBE_ROWS random stretches of `val_tokens`, of
    min(context // 2, PROBE_SEQ_LEN) tokens, each repeated. ICL score: PROBE_ROWS windows of
    T = min(context, len(val_tokens)) tokens evenly spaced over `val_tokens` (the same windows every call).
    Olsson et al. compare token 500 with token 50 of a context of 8192; scaled to a tiny context that is
    late = T - 1 against early = T // 10, each side averaged over a band of T // 16 tokens (tokens 25-40 against
    240-255 for T = 256), since 16 windows
    are far fewer than Olsson's thousands of sequences.
    """
    context = model.config.context_length
    t = min(context, len(val_tokens))
    if t < 3:
        raise GenloomError(f"the validation split has {len(val_tokens)} tokens; the ICL score needs at least 3")
    first, second = induction_score(model, vocab_size, min(context // 2, PROBE_SEQ_LEN), PROBE_ROWS, seed=0,
                                    source=val_tokens)
    starts = np.linspace(0, len(val_tokens) - t, PROBE_ROWS).astype(np.int64)
    windows = torch.from_numpy(np.stack([np.asarray(val_tokens[s : s + t], dtype=np.int64) for s in starts]))
    score = icl_score(model, windows, early=max(1, t // 10), late=t - 1, width=max(1, t // 16))  # (B, T)
    metrics = {
        "induction_first_loss": first,
        "induction_second_loss": second,
        "induction_gain": first - second,
        "icl_score": score,
    }
    mapping = None if tokenizer is None else mapping_induction_score(model, tokenizer)
    if mapping is not None:
        metrics |= {"mapping_first_loss": mapping[0], "mapping_repeat_loss": mapping[1],
                    "mapping_gain": mapping[0] - mapping[1]}
    return metrics

