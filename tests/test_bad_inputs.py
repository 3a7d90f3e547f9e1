"""Every bad input and fault a user can cause, against the CLI in-process: the exit code, no traceback, one line,
the message, and that nothing of the user's was touched.

Add a case here for every new command and every new failure: a command that regresses to a traceback, to
exit 0, or to replacing files it did not write fails this module by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from chat_helpers import make_base
from cli_helpers import one_error_line, run_cli

from genloom.checkpoint import STATE_FILE, list_checkpoints, save_checkpoint
from genloom.cli import main
from genloom.data.captions import train_caption_tokenizer
from genloom.data.translation import train_translation_tokenizer
from genloom.models.dalle import Dalle, preset
from genloom.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from genloom.models.vqvae import VQVAE
from genloom.models.vqvae import preset as vq_preset
from genloom.tokenizers import SpecialIds
from genloom.tokenizers.chat_template import CHATML

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}.\n" for i in range(80))
LM_FLAGS = ["--preset", "gpt2", "--n-layers", "1", "--d-model", "16", "--n-heads", "2", "--context-length", "16",
            "--batch-size", "2", "--no-progress"]


@dataclass
class Env:
    root: Path
    corpus: Path
    lm: Path  # a run of a tiny character GPT: checkpoints at steps 2 and 4, best/, metrics.jsonl
    translator: Path  # a (random-weight) seq2seq checkpoint with its BPE
    vq: Path  # a (random-weight) VQ image tokenizer
    t2i: Path  # a text-to-image run: best/ and image_tokenizer/
    foreign: Path  # a folder of the user's own files
    a_file: Path  # a file of the user's


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("bad-inputs")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT)
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        mp.setenv("GENLOOM_CACHE", str(root / "cache"))
        argv = ["train", "lm", "--data", corpus, *LM_FLAGS, "--steps", "4", "--eval-interval", "2", "--out",
                root / "lm"]
        assert main([str(a) for a in argv]) == 0
    pairs = [(f"{i}", f"number {i}") for i in range(30)]
    words = train_translation_tokenizer(pairs, 300)
    config = Seq2SeqConfig(vocab_size=words.vocab_size, max_len=16, n_encoder_layers=1, n_decoder_layers=1,
                           d_model=16, n_heads=2, d_ff=32, pad_id=SpecialIds.of(words).pad)
    save_checkpoint(root / "translator", Seq2SeqTransformer(config), "seq2seq", config, words)
    vq_config = vq_preset("vq-tiny")
    vq = VQVAE(vq_config)
    save_checkpoint(root / "vq", vq, "vqvae", vq_config, None)
    captions = train_caption_tokenizer(["a red circle", "a blue square"], 300)
    dalle = preset("dalle-tiny", text_vocab_size=captions.vocab_size, pad_id=SpecialIds.of(captions).pad,
                   image_vocab_size=vq_config.vocab_size, grid_size=vq_config.grid_size, text_len=8)
    save_checkpoint(root / "t2i" / "best", Dalle(dalle), "dalle", dalle, captions)
    save_checkpoint(root / "t2i" / "image_tokenizer", vq, "vqvae", vq_config, None)
    foreign = root / "my-files"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    (foreign / "data").mkdir()
    (foreign / "data" / "results.csv").write_text("1,2,3")
    a_file = root / "notes.txt"
    a_file.write_text("my notes")
    return Env(root, corpus, root / "lm", root / "translator", root / "vq", root / "t2i", foreign, a_file)


def _fingerprint(*paths: Path) -> dict[str, str]:
    """Every file under `paths` with a hash of its bytes: what a command must leave exactly as it was."""
    files = [p for path in paths for p in ([path] if path.is_file() else sorted(path.rglob("*"))) if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# ---- mutations of a copy of the LM run ------------------------------------------------------------------


def _lm_copy(env: Env, tmp: Path) -> Path:
    shutil.copytree(env.lm, tmp / "lm")
    return tmp / "lm"


def _edit_model_config(env: Env, tmp: Path, **changes: object) -> Path:
    run = _lm_copy(env, tmp)
    for checkpoint in [*list_checkpoints(run), run / "best"]:
        raw = json.loads((checkpoint / "config.json").read_text())
        raw["model"] = {**raw["model"], **changes} if "model" not in changes else changes["model"]
        (checkpoint / "config.json").write_text(json.dumps(raw))
    return run


def _write_state(env: Env, tmp: Path, write: Callable[[Path], None]) -> list[object]:
    """Resume arguments for a copy of the LM run whose latest training state `write` replaced."""
    run = _lm_copy(env, tmp)
    write(list_checkpoints(run)[-1] / STATE_FILE)
    return ["train", "lm", "--data", env.corpus, *LM_FLAGS, "--steps", "6", "--out", run, "--resume"]


class _RunsCode:
    """An object whose unpickling would run code: a `weights_only` load must refuse it."""

    def __reduce__(self) -> tuple[object, ...]:
        return (print, ("this must never run",))


def _char_vocab(env: Env, tmp: Path, content: str) -> Path:
    run = _lm_copy(env, tmp)
    (run / "best" / "char_tokenizer.json").write_text(content)
    return run / "best"


def _smaller_vocab(env: Env, tmp: Path) -> Path:
    best = _lm_copy(env, tmp) / "best"
    record = json.loads((best / "char_tokenizer.json").read_text())
    record["chars"] = record["chars"][:-3]
    (best / "char_tokenizer.json").write_text(json.dumps(record))
    return best


def _existing(tmp: Path, name: str) -> Path:
    (tmp / name).write_text("an earlier result I want to keep")
    return tmp / name


def _empty(tmp: Path) -> Path:
    (tmp / "empty.txt").write_text("")
    return tmp / "empty.txt"


def _conversations(tmp: Path) -> Path:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}
    (tmp / "chats.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    return tmp / "chats.jsonl"


def _template_without_tokens(env: Env, tmp: Path) -> Path:
    best = _lm_copy(env, tmp) / "best"
    CHATML.save(best)  # a chat template beside a vocabulary that never had the chat tokens
    return best


def _train_lm(env: Env, *extra: object) -> list[object]:
    return ["train", "lm", "--data", env.corpus, *LM_FLAGS, "--steps", "2", *extra]


# ---- the cases --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    argv: Callable[[Env, Path], list[object]]
    message: str  # what the one line must say
    code: int = 1  # 1: a user error; 2: a usage error argparse reports


CASES: dict[str, Case] = {
    # Outputs: nothing the command did not write is ever replaced.
    "average-into-a-foreign-folder": Case(
        lambda e, t: ["average-checkpoints", e.lm, "--last", 2, "--out", e.foreign],
        "is not empty and is not an earlier average"),
    "average-into-the-run-itself": Case(
        lambda e, t: ["average-checkpoints", e.lm, "--last", 2, "--out", e.lm], "is the run"),
    "average-into-a-file": Case(
        lambda e, t: ["average-checkpoints", e.lm, "--last", 1, "--out", e.a_file], "is a file"),
    "export-into-a-foreign-folder": Case(
        lambda e, t: ["export", "hf", e.lm, e.foreign], "is not empty and is not an earlier Hugging Face export"),
    "export-into-a-run": Case(lambda e, t: ["export", "hf", e.lm, e.lm], "not an earlier Hugging Face export"),
    "train-into-a-foreign-folder": Case(lambda e, t: _train_lm(e, "--out", e.foreign),
                                        "is not empty and is not a genloom run directory"),
    "train-into-a-file": Case(lambda e, t: _train_lm(e, "--out", e.a_file), "is a file"),
    "train-translate-into-a-foreign-folder": Case(
        lambda e, t: ["train", "translate", "--data", "builtin:numbers", "--out", e.foreign],
        "not a genloom run directory"),
    "train-image-tokenizer-into-a-foreign-folder": Case(
        lambda e, t: ["train", "image-tokenizer", "--data", "builtin:shapes", "--out", e.foreign],
        "not a genloom run directory"),
    "imagine-into-a-foreign-folder": Case(
        lambda e, t: ["imagine", e.t2i, "a red circle", "--n-images", 1, "--out", e.foreign],
        "not a folder of images genloom generated"),
    "imagine-into-a-file": Case(lambda e, t: ["imagine", e.t2i, "a red circle", "--out", e.a_file], "is a file"),
    "eval-translate-over-an-existing-file": Case(
        lambda e, t: ["eval", "translate", e.translator, "--data", "builtin:numbers", "--src-lang", "digits",
                      "--out", _existing(t, "hyps.txt")], "exists; pass --overwrite"),
    "eval-translate-into-a-folder": Case(
        lambda e, t: ["eval", "translate", e.translator, "--data", "builtin:numbers", "--src-lang", "digits",
                      "--out", e.foreign], "is a directory"),
    "eval-image-over-an-existing-json": Case(
        lambda e, t: ["eval", "text-to-image", e.t2i, "--json", _existing(t, "scores.json")],
        "exists; pass --overwrite"),
    "plot-over-an-existing-file": Case(lambda e, t: ["plot", e.lm, "--out", _existing(t, "mine.png")],
                                       "exists; pass --overwrite"),
    "quickstart-lm-into-a-foreign-folder": Case(lambda e, t: ["quickstart", "lm", "--out", e.foreign],
                                                "not an earlier run"),
    "quickstart-translate-into-a-foreign-folder": Case(lambda e, t: ["quickstart", "translate", "--out", e.foreign],
                                                       "not an earlier run"),
    "quickstart-image-into-a-foreign-folder": Case(lambda e, t: ["quickstart", "image", "--out", e.foreign],
                                                   "not an earlier image quickstart"),
    # Damaged checkpoints: one line naming the file, never a traceback.
    "config-float-size": Case(lambda e, t: ["generate", _edit_model_config(e, t, d_model=16.0), "line"],
                              "d_model must be an integer, got 16.0"),
    "config-null-model": Case(lambda e, t: ["generate", _edit_model_config(e, t, model=None), "line"],
                              "is not a genloom checkpoint config"),
    "config-string-layers": Case(lambda e, t: ["generate", _edit_model_config(e, t, n_layers="one"), "line"],
                                 'n_layers must be an integer, got "one"'),
    "config-bool-layers": Case(lambda e, t: ["generate", _edit_model_config(e, t, n_layers=True), "line"],
                               "n_layers must be an integer, got true"),
    "config-unknown-choice": Case(lambda e, t: ["generate", _edit_model_config(e, t, norm="batchnorm"), "line"],
                                  'norm must be one of "layernorm", "rmsnorm"'),
    "weights-do-not-match-config": Case(lambda e, t: ["generate", _edit_model_config(e, t, d_ff=48), "line"],
                                        "mlp.fc_in.bias has shape (64,), the config makes it (48,)"),
    "char-vocabulary-not-json": Case(lambda e, t: ["generate", _char_vocab(e, t, "{broken"), "line"],
                                     "not a valid character vocabulary"),
    "char-vocabulary-too-small": Case(lambda e, t: ["generate", _smaller_vocab(e, t), "line"],
                                      "the tokenizer files do not belong to these weights"),
    "resume-state-garbage": Case(lambda e, t: _write_state(e, t, lambda p: p.write_bytes(b"not a zip at all")),
                                 "not a training state file (truncated or damaged)"),
    "resume-state-truncated": Case(
        lambda e, t: _write_state(e, t, lambda p: p.write_bytes(p.read_bytes()[:200])), "training_state.pt"),
    "resume-state-runs-code": Case(
        lambda e, t: _write_state(e, t, lambda p: p.write_bytes(pickle.dumps({"step": _RunsCode()}, protocol=2))),
        "holds more than tensors and plain values"),
    "resume-state-empty-dict": Case(lambda e, t: _write_state(e, t, lambda p: torch.save({}, p)),
                                    "is not a genloom training state"),
    # Flags.
    "learning-rate-zero": Case(lambda e, t: _train_lm(e, "--lr", 0, "--out", t / "r"),
                               "the learning rate (0) must be > 0"),
    "negative-ema-decay": Case(lambda e, t: _train_lm(e, "--ema-decay", -1, "--out", t / "r"), "--ema-decay", 2),
    "ema-decay-one": Case(lambda e, t: _train_lm(e, "--ema-decay", 1, "--out", t / "r"), "ema_decay (1.0)"),
    "unknown-preset": Case(lambda e, t: _train_lm(e, "--preset", "gpt5", "--out", t / "r"), "gpt5"),
    "heads-do-not-divide": Case(lambda e, t: _train_lm(e, "--n-heads", 3, "--out", t / "r"), "divisible"),
    "missing-data": Case(lambda e, t: ["train", "lm", "--data", t / "missing.txt", "--out", t / "r"], "missing.txt"),
    "steps-zero": Case(lambda e, t: _train_lm(e, "--steps", 0), "--steps", 2),
    "resume-an-empty-folder": Case(lambda e, t: _train_lm(e, "--out", t, "--resume"), "no checkpoint to resume"),
    # Commands on the wrong kind of model or path.
    "generate-a-missing-path": Case(lambda e, t: ["generate", t / "nowhere", "hi"], "does not exist"),
    "generate-a-foreign-folder": Case(lambda e, t: ["generate", e.foreign, "hi"], "not a checkpoint"),
    "generate-a-translator": Case(lambda e, t: ["generate", e.translator, "hi"], "not a language model"),
    "generate-a-too-long-prompt": Case(lambda e, t: ["generate", e.lm, "a" * 40], "longer than the model's context"),
    "generate-unknown-character": Case(lambda e, t: ["generate", e.lm, "\u03b6"], "not in this model's vocabulary"),
    "generate-unknown-device": Case(lambda e, t: ["generate", e.lm, "line", "--device", "tpu9"], "device"),
    "translate-a-language-model": Case(lambda e, t: ["translate", e.lm, "hi"], "not a translation model"),
    "imagine-a-vq-model": Case(lambda e, t: ["imagine", e.vq, "a red circle"], "not a text-to-image model"),
    "imagine-rerank-without-clip": Case(lambda e, t: ["imagine", e.t2i, "a red circle", "--rerank", 2],
                                        "needs both --clip"),
    "imagine-a-too-long-caption": Case(lambda e, t: ["imagine", e.t2i, "a red circle " * 10], "more than the model's"),
    "eval-image-unscored-data": Case(lambda e, t: ["eval", "text-to-image", e.t2i, "--data", "builtin:emoji"],
                                     "builtin:shapes or builtin:digits"),
    "plot-not-a-run": Case(lambda e, t: ["plot", t / "nowhere"], "nowhere"),
    "info-nothing": Case(lambda e, t: ["info"], "--preset"),
    "info-unknown-preset": Case(lambda e, t: ["info", "--preset", "gpt5"], "gpt5"),
    "empty-data": Case(lambda e, t: ["train", "lm", "--data", _empty(t), "--out", t / "r"], "is empty"),
    "negative-temperature": Case(lambda e, t: ["generate", e.lm, "line", "--temperature", -1], "--temperature", 2),
    "top-p-above-one": Case(lambda e, t: ["generate", e.lm, "line", "--top-p", 2], "top_p"),
    "export-a-foreign-folder": Case(lambda e, t: ["export", "hf", e.foreign, t / "hf"], "not a checkpoint"),
    # Chat.
    "train-chat-on-a-translator": Case(lambda e, t: ["train", "chat", "--base", e.translator, "--out", t / "r"],
                                       "chat fine-tuning needs a GPT"),
    "train-chat-malformed-conversations": Case(
        lambda e, t: ["train", "chat", "--base", e.lm, "--data", _conversations(t), "--out", t / "r"],
        "chats.jsonl:2: message 2 has role 'robot'"),
    "train-chat-nothing-to-learn": Case(lambda e, t: ["train", "chat", "--base", e.lm, "--out", t / "r"],
                                        "no assistant tokens to learn from"),
    "train-chat-into-a-foreign-folder": Case(lambda e, t: ["train", "chat", "--base", e.lm, "--out", e.foreign],
                                             "not a genloom run directory"),
    "chat-without-a-template": Case(lambda e, t: ["chat", e.lm], "has no chat template; make a chat model from it"),
    "chat-lost-its-special-tokens": Case(lambda e, t: ["chat", _template_without_tokens(e, t)],
                                         "needs the special token(s) <|im_start|>, <|im_end|>"),
    "eval-chat-over-an-existing-json": Case(
        lambda e, t: ["eval", "chat", e.lm, "--json", _existing(t, "scores.json")], "exists; pass --overwrite"),
    "eval-few-shot-too-many-shots": Case(lambda e, t: ["eval", "few-shot", make_base(t / "b", 16), "--shots", "0,8"],
                                         "does not fit the context of 16 tokens: at most"),
    "eval-few-shot-symbols-not-in-vocabulary": Case(lambda e, t: ["eval", "few-shot", e.lm],
                                                    "the few-shot prompts use characters"),
    "eval-few-shot-bad-shots": Case(lambda e, t: ["eval", "few-shot", e.lm, "--shots", "two"], "comma-separated"),
    "eval-few-shot-unknown-family": Case(lambda e, t: ["eval", "few-shot", e.lm, "--families", "poetry"],
                                         "unknown few-shot family 'poetry'"),
    "quickstart-chat-into-a-foreign-folder": Case(lambda e, t: ["quickstart", "chat", "--out", e.foreign],
                                                  "not an earlier run"),
    "unknown-command": Case(lambda e, t: ["fly"], "fly", 2),
    "no-command": Case(lambda e, t: [], "required", 2),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_touches_nothing(
    name: str, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENLOOM_CACHE", str(env.root / "cache"))
    monkeypatch.chdir(tmp_path)
    case = CASES[name]
    argv = case.argv(env, tmp_path)
    before = _fingerprint(env.foreign, env.a_file, env.lm, env.t2i)
    if case.code == 2:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main([str(a) for a in argv])
        rc, err = exited.value.code, capsys.readouterr().err
    else:
        rc, _, err = run_cli(capsys, *argv)
    assert rc == case.code, err
    line = one_error_line(err)
    assert case.message in line, line
    assert _fingerprint(env.foreign, env.a_file, env.lm, env.t2i) == before, "a bad input changed files"


def test_device_out_of_memory_is_one_line_and_keeps_the_checkpoints(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU that runs out of memory mid-training (here a step that raises CUDA's error) ends the command with one
    line naming the allocation and what to change, and the run's checkpoints are as they were."""
    from genloom.train.lm import LanguageModelTask

    monkeypatch.setenv("GENLOOM_CACHE", str(env.root / "cache"))
    run = _lm_copy(env, tmp_path)
    before = _fingerprint(run)

    def allocation_fails(*args: object) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                     "79.19 GiB of which 1.06 GiB is free.\nOf the allocated memory ...")

    monkeypatch.setattr(LanguageModelTask, "loss", allocation_fails)
    rc, _, err = run_cli(capsys, "train", "lm", "--data", env.corpus, *LM_FLAGS, "--steps", "6", "--out", run,
                         "--resume")
    assert rc == 1, err
    line = one_error_line(err)
    assert "ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in line, line
    assert "--batch-size" in line and "--grad-accum" in line, line
    assert _fingerprint(run) == before, "a failed step changed the run's checkpoints"


def test_other_runtime_errors_are_not_taken_for_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only an allocation failure becomes the one-line message: any other RuntimeError is a bug and keeps its
    traceback."""
    import genloom.cli.lm as lm_commands

    def broken(args: object) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(lm_commands, "_cmd_generate", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["generate", "some-run", "a prompt"])
