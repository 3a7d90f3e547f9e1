"""The chat commands end to end: `train chat` (with its report card), `eval chat` before and after, `eval few-shot`,
and `chat` scripted through stdin with /save, --load and history kept within the context."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from chat_helpers import make_base
from cli_helpers import cli_fails, cli_ok, run_cli

from genloom.cli.app import build_parser
from genloom.data.icl import ICL_FAMILIES

TRAIN = ["--steps", 3, "--eval-interval", 3, "--eval-batches", 1, "--batch-size", 4, "--train-examples", 60,
         "--val-examples", 8, "--report-questions", 2, "--no-progress"]


def _chat_run(capsys: pytest.CaptureFixture[str], root: Path, base: Path, *extra: object) -> tuple[Path, str]:
    out = root / f"chat{len(list(root.iterdir()))}"
    return out, cli_ok(capsys, "train", "chat", "--base", base, "--out", out, *TRAIN, *extra)


def test_train_chat_writes_its_report_card(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    out, printed = _chat_run(capsys, tmp_path, base)
    assert "training conversations:" in printed and "Held-out exact-answer accuracy" in printed
    report = json.loads((out / "report.json").read_text())
    for key in ("parameters", "tokens_seen", "training_seconds", "base_val_loss", "icl_score", "induction_gain",
                "mapping_gain", "few_shot_accuracy", "chat_accuracy"):
        assert key in report, key
    assert set(report["chat_accuracy"]["before"]) == set(report["chat_accuracy"]["after"]) == {
        "arithmetic", "units", "instructions", "pydoc", "follow_up", "all"}
    shots = report["few_shot_accuracy"]
    most = [k for k in shots if k != "k=0"]
    assert "k=0" in shots and len(most) == 1 and 0 < int(most[0][2:]) <= 8  # 8, or the most that fit the context
    assert all("mean" in row for row in shots.values())
    assert report["tokens_seen"] > 0 and (out / "report.md").read_text().startswith("# Chat run report")
    # Padding instead of packing trains as well; the report is rewritten for the new run.
    padded, _ = _chat_run(capsys, tmp_path, base, "--no-packing")
    assert json.loads((padded / "report.json").read_text())["steps"] == 3

    # eval chat: the chat model through its template, the base through a plain prompt, same questions.
    after = cli_ok(capsys, "eval", "chat", out, "--n", 2, "--json", tmp_path / "after.json")
    before = cli_ok(capsys, "eval", "chat", base, "--n", 2)
    assert "chat template" in after and "plain prompt" in before and "arithmetic" in before
    scores = json.loads((tmp_path / "after.json").read_text())
    assert scores["families"]["units"]["total"] == 2

    # chat from a pipe: one turn per line, one answer per line; /save writes a file `--load` continues.
    conversation = tmp_path / "conversation.jsonl"
    answers = _chat_stdin(capsys, out, f"What is 2 + 3?\nNow add 5 to that.\n/save {conversation}\n/exit\n")
    assert answers[-1].startswith("(saved to")
    saved = json.loads(conversation.read_text())["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
    assert saved[0]["content"] == "What is 2 + 3?"
    _chat_stdin(capsys, out, "/reset\nhi\n", "--load", conversation, "--system", "Be brief.")

    # few-shot accuracy of the chat model, for the k that fit its context.
    table = cli_ok(capsys, "eval", "few-shot", out, "--shots", "0,1", "--n", 3)
    assert all(family in table for family in ICL_FAMILIES) and "k=1" in table


def _chat_stdin(capsys: pytest.CaptureFixture[str], checkpoint: Path, lines: str, *extra: object) -> list[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", io.StringIO(lines))
        rc, out, err = run_cli(capsys, "chat", checkpoint, "--max-new-tokens", 4, *extra)
    assert rc == 0, err
    return out.splitlines()


def test_chat_drops_the_oldest_turns_with_a_notice(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = make_base(tmp_path / "base", context=64)
    out = tmp_path / "chat"
    cli_ok(capsys, "train", "chat", "--base", base, "--out", out, *TRAIN)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", io.StringIO("What is 12 + 30?\nWhat is 7 * 8?\nWhat is 9 - 4?\n"))
        rc, _, err = run_cli(capsys, "chat", out, "--max-new-tokens", 8)
    assert rc == 0 and "oldest turn(s) no longer fit the context" in err


def test_quickstart_takes_chat() -> None:
    args = build_parser().parse_args(["quickstart", "chat", "--steps", "3", "--no-interactive"])
    assert args.what == "chat" and args.interactive is False


def test_quickstart_chat_runs_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    printed = cli_ok(capsys, "quickstart", "chat", "--steps", 2, "--out", tmp_path / "qc", "--no-interactive")
    assert "first a base language model" in printed and "you> What is 23 + 45?" in printed
    assert (tmp_path / "quickstart" / "best").is_dir() and (tmp_path / "qc" / "report.md").is_file()
    # A second run reuses the base and replaces its own earlier run.
    assert "reusing the language model" in cli_ok(capsys, "quickstart", "chat", "--steps", 2, "--out",
                                                  tmp_path / "qc", "--no-interactive")


def test_train_chat_takes_a_mixture_and_bf16() -> None:
    args = build_parser().parse_args(["train", "chat", "--base", "runs/base", "--data",
                                      "builtin:arithmetic+instructions", "--dtype", "bf16"])
    assert args.dtype == "bf16" and args.data == "builtin:arithmetic+instructions"


def test_train_chat_with_the_calculator_and_its_evaluation(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    base = make_base(tmp_path / "base")
    out, printed = _chat_run(capsys, tmp_path, base, "--tools", "calculator", "--data", "builtin:arithmetic")
    assert json.loads((out / "best" / "tokenizer_config.json").read_text())["genloom_tools"] == ["calculator"]
    assert "arithmetic" in printed
    evaluated = cli_ok(capsys, "eval", "chat", out, "--n", 2, "--data", "builtin:arithmetic")
    assert "chat template with the calculator" in evaluated
    assert "plain prompt" in cli_ok(capsys, "eval", "chat", out, "--n", 2, "--data", "builtin:arithmetic", "--plain")
    assert "unknown tool(s) browser" in cli_fails(capsys, "train", "chat", "--base", base, "--tools", "browser",
                                                  "--out", tmp_path / "never")
    assert not (tmp_path / "never").exists()
