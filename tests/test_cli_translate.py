"""`genloom train translate`, `translate` and `eval translate` called in-process: a tiny end-to-end run on the
built-in numbers corpus, the LSTM family, and one-line errors (no traceback) for the user's mistakes."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
from cli_helpers import cli_fails, cli_ok

from genloom.cli import main

# digits -> en: short sources, so a few dozen steps on a small token budget are enough for a round trip.
DATA = ["--data", "builtin:numbers", "--src-lang", "digits", "--tgt-lang", "en"]
TINY = [
    "--preset", "transformer-tiny", "--steps", "30", "--max-tokens", "256", "--vocab-size", "300",
    "--warmup", "10", "--eval-interval", "30", "--eval-batches", "2", "--device", "cpu", "--no-progress",
]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENLOOM_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A transformer-tiny trained for a few dozen steps on digits -> en, and what training printed."""
    root = tmp_path_factory.mktemp("translate")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv("GENLOOM_CACHE", str(root / "cache"))
        mp.chdir(root)
        assert main(["train", "translate", *DATA, *TINY, "--out", str(root / "run")]) == 0
    return root / "run", out.getvalue()


def test_train_translate_then_translate_and_eval(
    run: tuple[Path, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run_dir, printed = run
    assert "done: step 30" in printed
    assert "bleu" in printed and "best (step 30" in printed  # BLEU measured at validation, best/ chosen by it
    assert (run_dir / "metrics.jsonl").is_file()

    out = cli_ok(capsys, "translate", run_dir, "42", "--beam-size", "2")
    assert len(out.splitlines()) == 1

    monkeypatch.setattr(sys, "stdin", io.StringIO("7\n\n1234\n99\n"))
    out = cli_ok(capsys, "translate", run_dir, "--batch-size", "2")
    lines = out.splitlines()
    assert len(lines) == 4 and lines[1] == ""  # output line n is input line n; a blank line stays blank
    assert lines[0] == cli_ok(capsys, "translate", run_dir, "7").rstrip("\n")  # the same alone as in a stream

    hyps = tmp_path / "hyps.txt"
    out = cli_ok(capsys, "eval", "translate", run_dir, *DATA, "--split", "val", "--beam-size", "1", "--out", hyps)
    assert "BLEU " in out and "chrF " in out and "exact match" in out
    assert "nrefs:1" in out  # the sacreBLEU signature
    n_val = int(next(line for line in out.splitlines() if line.startswith("sentences")).split()[1])
    assert len(hyps.read_text(encoding="utf-8").splitlines()) == n_val > 0


def test_multi_task_model_serves_each_direction_by_tag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = cli_ok(
        capsys, "train", "translate", "--data", "builtin:numbers", "--directions", "digits-en,digits-de", *TINY,
        "--out", tmp_path / "multi",
    )
    assert "done: step 30" in out
    assert len(cli_ok(capsys, "translate", tmp_path / "multi", "12", "--src-lang", "digits", "--tgt-lang", "de")
               .splitlines()) == 1
    assert "pass --src-lang and --tgt-lang" in cli_fails(capsys, "translate", tmp_path / "multi", "12")
    err = cli_fails(capsys, "translate", tmp_path / "multi", "12", "--src-lang", "digits", "--tgt-lang", "fr")
    assert "unknown language pair digits-fr" in err and "digits-en, digits-de" in err
    out = cli_ok(capsys, "eval", "translate", tmp_path / "multi", "--data", "builtin:numbers", "--src-lang", "digits",
                 "--tgt-lang", "de", "--split", "val", "--beam-size", "1")
    assert "(digits->de)" in out and "BLEU " in out


def test_language_pattern_files_with_separate_validation_set(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    numbers = {"en": ["one", "two", "three", "four", "five", "six"],
               "de": ["eins", "zwei", "drei", "vier", "fünf", "sechs"]}
    for lang, words in numbers.items():
        (tmp_path / f"train.{lang}").write_text("\n".join(words * 5) + "\n", encoding="utf-8")
        (tmp_path / f"dev.{lang}").write_text("\n".join(words[:2]) + "\n", encoding="utf-8")
    out = cli_ok(
        capsys, "train", "translate", "--data", tmp_path / "train.{lang}", "--val-data", tmp_path / "dev.{lang}",
        "--src-lang", "en", "--tgt-lang", "de", *TINY, "--steps", "5", "--eval-interval", "5",
        "--out", tmp_path / "run",
    )
    assert "done: step 5" in out
    out = cli_ok(capsys, "eval", "translate", tmp_path / "run", "--data", tmp_path / "dev.{lang}", "--src-lang",
                 "en", "--tgt-lang", "de", "--split", "all", "--beam-size", "1")
    assert "sentences    2" in out


def test_too_long_source_is_one_line(run: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    err = cli_fails(capsys, "translate", run[0], "1 " * 200)
    assert "max_len" in err


def test_lstm_family_trains(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = cli_ok(
        capsys, "train", "translate", *DATA, "--family", "lstm", "--no-attention", "--steps", "3",
        "--max-tokens", "128", "--vocab-size", "300", "--eval-batches", "1", "--device", "cpu", "--no-progress",
        "--out", tmp_path / "lstm",
    )
    assert "done: step 3" in out
    out = cli_ok(capsys, "translate", tmp_path / "lstm", "5", "--beam-size", "1")
    assert len(out.splitlines()) == 1


def test_user_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = ["train", "translate", *TINY, "--out", tmp_path / "r"]
    assert "no-such" in cli_fails(capsys, *base, "--data", "builtin:no-such")
    assert "'xx'" in cli_fails(capsys, *base, "--data", "builtin:numbers", "--src-lang", "xx")
    src, tgt = tmp_path / "a.en", tmp_path / "a.de"
    src.write_text("one\ntwo\nthree\n", encoding="utf-8")
    tgt.write_text("eins\nzwei\n", encoding="utf-8")
    assert "line-aligned" in cli_fails(capsys, *base, "--data", f"{src},{tgt}")
    assert "lstm" in cli_fails(capsys, *base, "--data", "builtin:numbers", "--no-attention")
    assert "nothing to translate" not in cli_fails(capsys, "translate", tmp_path / "missing", "hi")
    assert "bad direction" in cli_fails(capsys, *base, "--data", "builtin:numbers", "--directions", "en-de,deen")
    assert "--bleu-sentences" in cli_fails(capsys, *base, "--data", "builtin:numbers", "--bleu-sentences", "0",
                                        "--best-metric", "bleu")
    assert "patience" in cli_fails(capsys, *base, "--data", "builtin:numbers", "--patience", "-1")


def test_translate_refuses_a_language_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 40, encoding="utf-8")
    cli_ok(
        capsys, "train", "lm", "--data", corpus, "--n-layers", "1", "--d-model", "16", "--n-heads", "2",
        "--context-length", "16", "--batch-size", "2", "--steps", "2", "--eval-batches", "1", "--no-progress",
        "--device", "cpu", "--out", tmp_path / "gpt",
    )
    assert "not a translation model" in cli_fails(capsys, "translate", tmp_path / "gpt", "hello")
    assert "not a translation model" in cli_fails(
        capsys, "eval", "translate", tmp_path / "gpt", "--data", "builtin:numbers", "--src-lang", "digits"
    )


def test_quickstart_takes_lm_or_translate() -> None:
    from genloom.cli import build_parser

    assert build_parser().parse_args(["quickstart"]).what == "lm"
    assert build_parser().parse_args(["quickstart", "translate"]).what == "translate"
