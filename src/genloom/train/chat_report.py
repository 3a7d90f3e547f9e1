"""The report card of a chat run: `report.json` and `report.md` in the run directory, so two runs compare at a
glance (nanochat's report card, which it has since dropped).

What it holds: parameters, tokens seen, training time, the base model's and the chat model's validation loss,
the in-context-learning probes (Olsson et al.'s ICL score and the induction gain, measured on the validation
conversations), few-shot accuracy at k = 0 and k = 8 on the built-in ICL families, and held-out exact-answer
accuracy by family of the base model (plain prompt) and of the chat model (its template), on the same questions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from genloom.checkpoint import read_checkpoint_config, resolve_checkpoint
from genloom.data.conversations import encode_conversations, held_out_conversations, load_conversations
from genloom.data.icl import ICL_FAMILIES
from genloom.errors import GenloomError
from genloom.eval.chat import FamilyScore, chat_accuracy, overall
from genloom.eval.icl import few_shot_accuracy, icl_probe_metrics, max_shots_that_fit
from genloom.interop.hf_gpt2 import is_hf_directory
from genloom.models.gpt import GPT
from genloom.outputs import write_text_atomically
from genloom.registry import load_language_model
from genloom.tokenizers import Tokenizer
from genloom.tokenizers.chat_tools import CALCULATOR
from genloom.train.trainer import TrainResult

REPORT_JSON, REPORT_MD = "report.json", "report.md"
REPORT_SHOTS = (0, 8)


def base_val_loss(base: Path) -> float | None:
    """The validation loss saved with a genloom base checkpoint; None for a Hugging Face directory."""
    if is_hf_directory(base):
        return None
    value = read_checkpoint_config(resolve_checkpoint(base)).get("val_loss")
    return float(value) if isinstance(value, (int, float)) else None


def _accuracy_table(scores: dict[str, FamilyScore]) -> dict[str, Any]:
    return {**{f: round(s.accuracy, 4) for f, s in sorted(scores.items())}, "all": round(overall(scores), 4)}


def _few_shot(model: GPT, tokenizer: Tokenizer, n: int) -> dict[str, Any]:
    """Accuracy at each of REPORT_SHOTS, or at the most shots that fit the context when fewer do (a small
    model's context holds fewer than 8 examples: its report says k=7, not an error)."""
    table: dict[str, Any] = {}
    try:
        fit = max_shots_that_fit(tokenizer, ICL_FAMILIES, model.config.context_length, n)
    except GenloomError:  # the vocabulary lacks a symbol: each k below reports it
        fit = -1
    for k in sorted({min(k, fit) if fit >= 0 else k for k in REPORT_SHOTS}):
        try:
            by_family = few_shot_accuracy(model, tokenizer, ICL_FAMILIES, [k], n=n)
        except GenloomError as e:  # k shots do not fit this model's context, or its vocabulary lacks a symbol
            table[f"k={k}"] = {"error": str(e)}
            continue
        accuracies = {family: by_family[family][k] for family in ICL_FAMILIES}
        table[f"k={k}"] = {**{f: round(a, 4) for f, a in accuracies.items()},
                           "mean": round(sum(accuracies.values()) / len(accuracies), 4)}
    return table


def build_report(run_dir: Path, base: str, data: str, result: TrainResult, n_eval: int = 50,
                 seed: int = 0) -> dict[str, Any]:
    """Measure the chat model in `run_dir` (best/) and its base; the report as a JSON-ready dict."""
    model, tokenizer = load_language_model(run_dir)
    assert tokenizer.chat_format is not None, "a chat run's tokenizer has its template"
    calculator = CALCULATOR in tokenizer.chat_format.tools  # its answers call it; the base's are plain
    after = chat_accuracy(model, tokenizer, held_out_conversations(data, n_eval, seed, calculator))
    base_model, base_tokenizer = load_language_model(Path(base))
    before = chat_accuracy(base_model, base_tokenizer, held_out_conversations(data, n_eval, seed), plain=True)
    val = load_conversations(data, "val", 64, seed, calculator=calculator)
    encoded, _ = encode_conversations(val, tokenizer, tokenizer.chat_format, model.config.context_length)
    val_tokens = np.fromiter((t for e in encoded for t in e.ids), dtype=np.int64)
    probes = icl_probe_metrics(model, val_tokens, model.config.vocab_size, tokenizer) if len(val_tokens) > 2 * (
        model.config.context_length + 1) else {}
    return {
        "run": str(run_dir), "base": base, "data": data,
        "parameters": model.num_parameters(),
        "steps": result.step, "tokens_seen": result.tokens_seen,
        "training_seconds": round(result.train_seconds, 1),
        "base_val_loss": base_val_loss(Path(base)),
        "chat_val_loss": result.best.get("val_loss", result.val_loss),
        "icl_score": probes.get("icl_score"), "induction_gain": probes.get("induction_gain"),
        "mapping_gain": probes.get("mapping_gain"),  # None unless the tokenizer spells mappings a character a token
        "few_shot_accuracy": _few_shot(model, tokenizer, max(10, n_eval // 2)),
        "chat_accuracy": {"before": _accuracy_table(before), "after": _accuracy_table(after)},
        "held_out_questions": {f: s.total for f, s in sorted(after.items())},
    }


def _number(value: object, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def report_markdown(report: dict[str, Any]) -> str:
    before, after = report["chat_accuracy"]["before"], report["chat_accuracy"]["after"]
    lines = [
        f"# Chat run report: {report['run']}", "",
        f"Base `{report['base']}`, fine-tuned on `{report['data']}`.", "",
        "| | |", "|---|---|",
        f"| parameters | {report['parameters']:,} |",
        f"| steps | {report['steps']} |",
        f"| tokens seen | {report['tokens_seen']:,} |",
        f"| training time | {report['training_seconds']:.0f} s |",
        f"| base validation loss | {_number(report['base_val_loss'])} |",
        f"| chat validation loss | {_number(report['chat_val_loss'])} |",
        f"| ICL score (late - early token loss) | {_number(report['icl_score'], 3)} |",
        f"| induction gain (first - second copy loss) | {_number(report['induction_gain'], 3)} |",
        f"| mapping gain (first-seen - repeated output loss) | {_number(report.get('mapping_gain'), 3)} |",
        "", "## Held-out exact-answer accuracy", "",
        "| family | questions | base (plain prompt) | chat |", "|---|---:|---:|---:|",
    ]
    counts = report["held_out_questions"]
    for family in [*sorted(counts), "all"]:
        n = counts.get(family, sum(counts.values()))
        lines.append(f"| {family} | {n} | {100 * before.get(family, 0):.1f}% | {100 * after.get(family, 0):.1f}% |")
    lines += ["", "## Few-shot accuracy (no weight update)", ""]
    for k, row in report["few_shot_accuracy"].items():
        if "error" in row:
            lines.append(f"- {k}: {row['error']}")
        else:
            shown = ", ".join(f"{f} {100 * a:.0f}%" for f, a in row.items() if f != "mean")
            lines.append(f"- {k}: mean {100 * row['mean']:.1f}% ({shown})")
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    write_text_atomically(run_dir / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    write_text_atomically(run_dir / REPORT_MD, report_markdown(report))
