"""The `genloom` command line, called in-process: info, a tiny train -> generate -> info/plot/resume/export
round trip on CPU, and one-line errors (no traceback) for every kind of user mistake."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from cli_helpers import cli_ok, one_error_line, run_cli

from genloom.cli import main
from genloom.models.gpt import count_parameters
from genloom.registry import load_pretrained

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SENTENCES = [
    "To be, or not to be, that is the question.",
    "The quick brown fox jumps over the lazy dog.",
    "All that glitters is not gold.",
    "A journey of a thousand miles begins with a single step.",
    "Now is the winter of our discontent, made glorious summer.",
]
# A few KB of repeated but varied text.
TEXT = "\n".join(f"{i}: {SENTENCES[i % 5]} {SENTENCES[(3 * i + 1) % 5]}" for i in range(60)) + "\n"
CONTEXT = 16
MODEL_FLAGS = [
    # gpt2's architecture (biases, tanh GELU) so that `export hf` can express it.
    "--preset", "gpt2", "--n-layers", "1", "--d-model", "32", "--n-heads", "2",
    "--context-length", str(CONTEXT), "--batch-size", "4", "--no-progress",
]
TRAIN_FLAGS = [*MODEL_FLAGS, "--steps", "20", "--eval-interval", "10"]
PROMPT = "To be"  # 5 characters: 10 new tokens still fit the 16-token context


@dataclass
class Workspace:
    root: Path
    data: Path
    cache: Path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("cli")
    data = root / "corpus.txt"
    data.write_text(TEXT, encoding="utf-8")
    return Workspace(root, data, root / "cache")


@pytest.fixture(autouse=True)
def _isolated(workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokenized data goes to a temporary cache (never ~/.cache); relative paths land in tmp_path."""
    monkeypatch.setenv("GENLOOM_CACHE", str(workspace.cache))
    monkeypatch.chdir(tmp_path)


@contextlib.contextmanager
def _module_env(workspace: Workspace) -> Iterator[io.StringIO]:
    """_isolated for module-scoped fixtures (which cannot use monkeypatch or capsys)."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv("GENLOOM_CACHE", str(workspace.cache))
        mp.chdir(workspace.root)
        yield out


def _train(workspace: Workspace, out: Path, *extra: str) -> str:
    with _module_env(workspace) as stdout:
        assert main(["train", "lm", "--data", str(workspace.data), *TRAIN_FLAGS, "--out", str(out), *extra]) == 0
    return stdout.getvalue()


@pytest.fixture(scope="module")
def char_run(workspace: Workspace) -> tuple[Path, str]:
    """A run trained with the default (character) tokenizer, and what training printed."""
    run = workspace.root / "char-run"
    return run, _train(workspace, run)


@pytest.fixture(scope="module")
def bpe_run(workspace: Workspace) -> Path:
    run = workspace.root / "bpe-run"
    _train(workspace, run, "--tokenizer", "bpe", "--vocab-size", "300")
    return run


def _metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


# ---- info ----------------------------------------------------------------------------------------------


def test_info_preset_gpt2(capsys: pytest.CaptureFixture[str]) -> None:
    out = cli_ok(capsys, "info", "--preset", "gpt2")
    assert "124,439,808" in out


def test_info_preset_gpt3_175b(capsys: pytest.CaptureFixture[str]) -> None:
    out = cli_ok(capsys, "info", "--preset", "gpt3-175b")
    match = re.search(r"parameters:\s+([\d,]+)", out)
    assert match is not None, out
    assert 170e9 < int(match.group(1).replace(",", "")) < 180e9
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "fp32" in rows and "bf16" in rows
    assert rows["fp32"].count("GiB") == 4 and rows["bf16"].count("GiB") == 4


# ---- train lm and what uses its run --------------------------------------------------------------------


def test_train_writes_run_directory(char_run: tuple[Path, str]) -> None:
    run, printed = char_run
    assert "done: step 20" in printed
    for name in ("best", "checkpoint-0000010", "checkpoint-0000020"):
        assert (run / name / "config.json").is_file()
        assert (run / name / "model.safetensors").is_file()
    assert (run / "checkpoint-0000020" / "training_state.pt").is_file()
    records = _metrics(run)
    assert records[-1]["step"] == 20
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20]
    assert [r["step"] for r in records if "loss" in r] == [10, 20]


def test_generate_prints_prompt_and_is_seeded(char_run: tuple[Path, str], capsys: pytest.CaptureFixture) -> None:
    run, _ = char_run
    first = cli_ok(capsys, "generate", run, PROMPT, "--max-new-tokens", 10, "--seed", 0)
    second = cli_ok(capsys, "generate", run, PROMPT, "--max-new-tokens", 10, "--seed", 0)
    assert first.startswith(PROMPT)
    assert first == second
    assert len(first) == len(PROMPT) + 10 + 1  # char tokenizer: one character per token, then a newline


def test_generate_greedy(char_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = char_run
    first = cli_ok(capsys, "generate", run, PROMPT, "--temperature", 0, "--max-new-tokens", 8)
    second = cli_ok(capsys, "generate", run, PROMPT, "--temperature", 0, "--max-new-tokens", 8)
    assert first.startswith(PROMPT) and first == second
    assert len(first) == len(PROMPT) + 8 + 1


def test_generate_compiled_prints_what_eager_decoding_prints(char_run: tuple[Path, str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = char_run
    flags = ["--max-new-tokens", 12, "--seed", 3]
    assert cli_ok(capsys, "generate", run, PROMPT, *flags, "--compile") == cli_ok(capsys, "generate", run, PROMPT,
                                                                                 *flags)


def test_generate_reads_prompts_on_stdin_one_output_per_line(
    char_run: tuple[Path, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = char_run
    monkeypatch.setattr(sys, "stdin", io.StringIO("To be\n\nThe fox\n"))
    out = cli_ok(capsys, "generate", run, "--max-new-tokens", 4, "--seed", 0)
    blocks = out.split("-" * 40 + "\n")[:-1]
    assert len(blocks) == 3 and blocks[1] == "\n"  # the blank line's output is blank, in its place
    assert blocks[0].startswith("To be") and blocks[2].startswith("The fox")


def test_generation_capped_by_the_context_says_so(char_run: tuple[Path, str], capsys: pytest.CaptureFixture) -> None:
    run, _ = char_run
    rc, out, err = run_cli(capsys, "generate", run, "To be, or not to", "--max-new-tokens", 100)  # 16 = context
    assert rc == 0 and out == "To be, or not to\n"
    assert err.strip() == f"genloom: note: stopped at the context length of {CONTEXT} tokens"
    rc, out, err = run_cli(capsys, "generate", run, PROMPT, "--max-new-tokens", 100000000)
    assert rc == 0 and len(out) == CONTEXT + 1 and "stopped at the context length" in err
    rc, _, err = run_cli(capsys, "generate", run, PROMPT, "--max-new-tokens", 3)
    assert rc == 0 and err == ""


def test_plot_and_resume_survive_a_torn_metrics_line(
    char_run: tuple[Path, str], workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(char_run[0], run)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 21, "lo')  # what a crash mid-write leaves
    rc, out, err = run_cli(capsys, "plot", run)
    assert rc == 0 and "dropped a torn last line" in err
    out = cli_ok(capsys, "train", "lm", "--data", workspace.data, *MODEL_FLAGS, "--steps", 30, "--eval-interval", 10,
                 "--out", run, "--resume")
    assert "done: step 30" in out and [r["step"] for r in _metrics(run) if "loss" in r] == [10, 20, 30]


@pytest.mark.slow
def test_sigterm_mid_training_exits_non_zero_and_leaves_a_resumable_run(
    workspace: Workspace, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train = [sys.executable, "-m", "genloom.cli", "train", "lm", "--data", str(workspace.data), *MODEL_FLAGS,
             "--eval-interval", "5", "--out", str(run)]
    command = [*train, "--steps", "100000"]
    env = {**os.environ, "GENLOOM_CACHE": str(workspace.cache)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list(run.glob("checkpoint-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == "genloom: terminated (SIGTERM); the last complete checkpoint is kept"
    assert "Traceback" not in err
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary copy left behind
    out = subprocess.run([*train, "--steps", "1", "--resume"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "nothing to do" in out.stdout, out.stderr


def test_generate_leaves_grad_mode_alone(char_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    # main() called in-process (tests, notebooks) must not switch autograd off for the caller.
    run, _ = char_run
    cli_ok(capsys, "generate", run, PROMPT, "--max-new-tokens", 2, "--seed", 0)
    assert torch.is_grad_enabled()


def test_info_checkpoint(char_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = char_run
    out = cli_ok(capsys, "info", run)
    n = count_parameters(load_pretrained(run).config)
    assert f"{n:,}" in out
    assert str(run / "best") in out


def test_plot_writes_png(char_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = char_run
    # Every validation of a language model logs the in-context-learning probes, which the plot draws.
    validations = [r for r in _metrics(run) if "val_loss" in r]
    assert validations and all({"induction_gain", "icl_score", "induction_first_loss"} <= set(r) for r in validations)
    out = cli_ok(capsys, "plot", run)
    png = run / "curves.png"
    assert str(png) in out
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_resume_continues_to_more_steps(
    char_run: tuple[Path, str], workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(char_run[0], run)
    out = cli_ok(capsys, "train", "lm", "--data", workspace.data, *MODEL_FLAGS, "--steps", 30, "--eval-interval", 10,
              "--out", run, "--resume")
    assert "done: step 30" in out
    records = _metrics(run)
    assert records[-1]["step"] == 30
    assert [r["step"] for r in records if "loss" in r] == [10, 20, 30]  # no step logged twice
    assert (run / "checkpoint-0000030" / "training_state.pt").is_file()


def test_resume_with_another_tokenizer_is_a_user_error(
    char_run: tuple[Path, str], workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(char_run[0], run)
    rc, _, err = run_cli(capsys, "train", "lm", "--data", workspace.data, *MODEL_FLAGS, "--tokenizer", "bpe",
                      "--vocab-size", 300, "--steps", 30, "--out", run, "--resume")
    assert rc == 1
    one_error_line(err)
    assert "same --data and --tokenizer" in err


def test_train_bpe(bpe_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (bpe_run / "best" / "tokenizer.json").is_file()
    assert _metrics(bpe_run)[-1]["step"] == 20
    out = cli_ok(capsys, "generate", bpe_run, "The quick", "--max-new-tokens", 4, "--seed", 0)
    assert out.startswith("The quick")


# ---- export hf -----------------------------------------------------------------------------------------


def test_export_hf_loads_in_transformers(
    char_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    transformers = pytest.importorskip("transformers")
    run, _ = char_run
    out_dir = tmp_path / "hf"
    out = cli_ok(capsys, "export", "hf", run, out_dir)
    assert len(out.strip().splitlines()) == 1
    hf = transformers.GPT2LMHeadModel.from_pretrained(out_dir).eval()
    ours = load_pretrained(run).model
    ids = torch.arange(10)[None] % hf.config.vocab_size
    with torch.no_grad():
        assert torch.allclose(ours(ids), hf(ids).logits, atol=1e-4)


def test_export_hf_never_replaces_other_files(
    char_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = char_run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    rc, _, err = run_cli(capsys, "export", "hf", run, mine)
    assert rc == 1
    one_error_line(err)
    assert (mine / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("keep me too")
    rc, _, err = run_cli(capsys, "export", "hf", run, tmp_path / "file")
    assert rc == 1
    one_error_line(err)
    assert (tmp_path / "file").read_text() == "keep me too"
    # A new directory, an empty one, and an earlier export (replaced) are all fine.
    (tmp_path / "empty").mkdir()
    for out_dir in (tmp_path / "new", tmp_path / "empty", tmp_path / "new"):
        cli_ok(capsys, "export", "hf", run, out_dir)
        assert (out_dir / "model.safetensors").is_file()


def _generate_same_from_export(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], prompt: str) -> None:
    out_dir = tmp_path / "hf"
    cli_ok(capsys, "export", "hf", run, out_dir)
    flags = ["--temperature", 0, "--max-new-tokens", 5]
    from_run = cli_ok(capsys, "generate", run, prompt, *flags)
    from_hf = cli_ok(capsys, "generate", out_dir, prompt, *flags)
    assert from_run.startswith(prompt)
    assert from_hf == from_run


def test_export_hf_generate_matches_bpe(bpe_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _generate_same_from_export(bpe_run, tmp_path, capsys, "The quick")


def test_export_hf_generate_matches_char(
    char_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _generate_same_from_export(char_run[0], tmp_path, capsys, PROMPT)


def test_export_hf_refuses_what_gpt2_cannot_express(
    workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "modern"
    cli_ok(capsys, "train", "lm", "--data", workspace.data, *MODEL_FLAGS, "--preset", "tiny-modern",
        "--steps", 2, "--eval-interval", 2, "--out", run)
    rc, _, err = run_cli(capsys, "export", "hf", run, tmp_path / "hf")
    assert rc == 1
    one_error_line(err)
    assert "rotary" in err
    assert not (tmp_path / "hf").exists()


def test_stop_string_escape_means_newline(char_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = char_run
    flags = ["--max-new-tokens", 11, "--temperature", 0]
    typed = cli_ok(capsys, "generate", run, "To be\\nor", *flags, "--stop", "\\n")
    real = cli_ok(capsys, "generate", run, "To be\nor", *flags, "--stop", "\n")
    assert typed == real
    assert typed.startswith("To be\nor")  # the prompt's typed \n became a newline too
