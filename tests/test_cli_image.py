"""`genloom train image-tokenizer`, `train text-to-image`, `imagine` and `eval text-to-image` called in-process:
a tiny end-to-end run on a few dozen built-in shapes, and one-line errors (no traceback) for the user's mistakes."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import cli_fails, cli_ok
from PIL import Image

from genloom.checkpoint import save_checkpoint
from genloom.cli import build_parser, main
from genloom.data.builtin_images import HELD_OUT, OPENMOJI_ATTRIBUTION, parse_caption
from genloom.data.image_sets import load_images, split_images
from genloom.generate.image_io import read_png_metadata
from genloom.registry import load_image_tokenizer
from genloom.run_record import DATA_RECORD, read_data_record

DATA = ["--data", "builtin:shapes", "--limit", "64"]  # 64 scenes at 32x32: ~50 train, 3 val, ~11 held out
TINY = ["--steps", "4", "--batch-size", "8", "--warmup", "1", "--eval-interval", "4", "--eval-batches", "1",
        "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENLOOM_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(VQ run, text-to-image run, what training printed): vq-tiny then dalle-tiny, four steps each."""
    root = tmp_path_factory.mktemp("image")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.chdir(root)
        assert main(["train", "image-tokenizer", *DATA, "--preset", "vq-tiny", *TINY, "--out", "vq"]) == 0
        assert main(["train", "text-to-image", "--method", "tokens", *DATA, "--image-tokenizer", "vq",
                     "--preset", "dalle-tiny", "--vocab-size", "300", *TINY, "--out", "t2i"]) == 0
    return root / "vq", root / "t2i", out.getvalue()


def test_training_reports_and_records_its_data(runs: tuple[Path, Path, str]) -> None:
    vq, t2i, printed = runs
    assert printed.count("done: step 4") == 2
    assert "psnr" in printed and "image loss" in printed  # the metrics that chose each best/
    assert (t2i / "image_tokenizer" / "config.json").is_file()  # the VQ model travels with the run
    record = json.loads((t2i / DATA_RECORD).read_text())
    assert record["data"] == "builtin:shapes" and record["limit"] == 64 and record["resolution"] == 32
    assert record["image_tokenizer_data"] == "builtin:shapes"
    assert read_data_record(t2i / "best")["data"] == "builtin:shapes"  # found from a checkpoint, in its parent
    assert read_data_record(vq)["data"] == "builtin:shapes"


def test_shapes_split_keeps_held_out_combinations_out_of_training() -> None:
    data = load_images("builtin:shapes", 32, limit=200)
    assert len(data) == 200
    train, val, test = split_images(data, 0.05)
    assert len(train) + len(val) + len(test) == 200
    trained = [pair for c in [*train.captions, *val.captions] for pair in parse_caption(c)[0]]
    assert trained and not set(trained) & set(HELD_OUT)
    assert len(test) > 0 and test.held_out is not None and test.held_out.all()


def test_imagine_writes_pngs_grid_and_sidecars(
    runs: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, t2i, _ = runs
    out = cli_ok(capsys, "imagine", t2i, "a red circle", "a green triangle", "--n-images", 2, "--seed", 5,
                 "--top-k", 50, "--out", tmp_path / "s", "--device", "cpu")
    lines = out.splitlines()
    pngs = [Path(p) for p in lines[:4]]
    assert [p.name for p in pngs] == ["000-a-red-circle.png", "001-a-red-circle.png",
                                      "002-a-green-triangle.png", "003-a-green-triangle.png"]
    assert lines[4] == f"grid: {tmp_path / 's' / 'grid.png'}"
    with Image.open(pngs[0]) as img:
        assert img.size == (32, 32)
    sidecar = json.loads(pngs[3].with_suffix(".json").read_text())
    assert sidecar["prompt"] == "a green triangle"
    params = sidecar["parameters"]
    assert params["guidance_scale"] == 3.0 and params["top_k"] == 50 and params["image_seed"] == 8
    assert params["data"] == "builtin:shapes" and "attribution" not in sidecar
    assert read_png_metadata(tmp_path / "s" / "grid.png")["prompts"][2] == "a green triangle"


def test_imagine_reads_stdin_and_credits_openmoji(
    runs: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _, t2i, _ = runs
    emoji_run = tmp_path / "emoji-run"
    shutil.copytree(t2i, emoji_run)
    record = json.loads((emoji_run / DATA_RECORD).read_text())
    (emoji_run / DATA_RECORD).write_text(json.dumps({**record, "data": "builtin:emoji"}))
    monkeypatch.setattr(sys, "stdin", io.StringIO("a blue square\n\n"))
    out = cli_ok(capsys, "imagine", emoji_run, "--n-images", 1, "--out", tmp_path / "e", "--device", "cpu")
    assert out.splitlines()[-1] == OPENMOJI_ATTRIBUTION
    sidecar = json.loads((tmp_path / "e" / "000-a-blue-square.json").read_text())
    assert sidecar["attribution"] == OPENMOJI_ATTRIBUTION
    assert read_png_metadata(tmp_path / "e" / "000-a-blue-square.png")["attribution"] == OPENMOJI_ATTRIBUTION


def _summary(out: str) -> list[str]:
    return out.split("--- summary\n")[1].splitlines()[1:]  # the rows below the header


def test_eval_prints_a_row_per_guidance_scale(
    runs: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, t2i, _ = runs
    out = cli_ok(capsys, "eval", "text-to-image", t2i, "--n-per-caption", 2, "--max-captions", 3,
                 "--guidance-scales", "1,3", "--device", "cpu", "--json", tmp_path / "scores.json")
    assert "6 captions (3 held-out), 2 images each" in out
    rows = _summary(out)
    assert [r.split()[0] for r in rows] == ["1", "3"]
    report = json.loads((tmp_path / "scores.json").read_text())
    assert len(report["captions"]) == 6 and report["n_per_caption"] == 2
    assert [s["guidance_scale"] for s in report["scores"]] == [1.0, 3.0]
    for scores, row in zip(report["scores"], rows, strict=True):  # the JSON holds what the table shows
        seen = scores["seen"]["all_correct"]
        assert scores["seen"]["images"] == 6 and row.split()[1] == f"{100 * seen:.1f}%"
        assert 0.0 <= scores["memorization"]["copy_rate"] <= 1.0
    # A shapes report and a memorisation report per scale; the table header names the copy rate once more.
    assert out.count("shapes alignment") == 2 and out.count("copy rate") == 3
    digits = cli_ok(capsys, "eval", "text-to-image", t2i, "--data", "builtin:digits", "--limit", 100,
                    "--n-per-caption", 1, "--guidance-scales", "2", "--device", "cpu")
    assert "digit accuracy" in digits and "Fréchet distance" in digits
    (row,) = _summary(digits)
    assert row.split()[0] == "2" and len(row.split()) == 5  # no steps for the token method; images/s last


def test_folder_with_an_unreadable_image(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"picture {i}")
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "broken.txt").write_text("broken")
    out = cli_ok(capsys, "train", "image-tokenizer", "--data", folder, "--val-fraction", 0.25, "--preset", "vq-tiny",
                 "--steps", 1, "--batch-size", 4, "--eval-interval", 1, "--device", "cpu", "--no-progress")
    assert f"skipped 1 unreadable images in {folder}" in out
    assert "6 training and 2 validation images at 32x32" in out


def test_resolution_sets_the_image_tokenizers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = cli_ok(capsys, "train", "image-tokenizer", *DATA, "--resolution", 16, "--preset", "vq-tiny", *TINY,
                 "--out", tmp_path / "vq16")
    assert "at 16x16" in out
    config = json.loads((tmp_path / "vq16" / "best" / "config.json").read_text())["model"]
    assert config["resolution"] == 16  # a 4x4 code grid: vq-tiny halves twice


@pytest.fixture(scope="module")
def clip_run(runs: tuple[Path, Path, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(a clip-tiny reranker on the text-to-image run's VQ copy, what training printed)."""
    _, t2i, _ = runs
    root = tmp_path_factory.mktemp("clip")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", "clip", *DATA, "--image-tokenizer", str(t2i / "image_tokenizer"), "--preset", "clip-tiny",
                     "--vocab-size", "300", *TINY, "--out", str(root / "clip")]) == 0
    return root / "clip", out.getvalue()


def test_train_clip_and_rerank_in_imagine_and_eval(
    runs: tuple[Path, Path, str], clip_run: tuple[Path, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, t2i, _ = runs
    clip, printed = clip_run
    assert "done: step 4" in printed and (clip / "image_tokenizer" / "config.json").is_file()
    assert read_data_record(clip)["data"] == "builtin:shapes"
    out = cli_ok(capsys, "imagine", t2i, "a red circle", "a cyan square", "--n-images", 2, "--rerank", 3,
                 "--clip", clip, "--seed", 4, "--out", tmp_path / "r", "--device", "cpu")
    assert len(out.splitlines()) == 5  # four PNGs and the grid
    params = [json.loads(p.read_text())["parameters"] for p in sorted((tmp_path / "r").glob("*.json"))]
    assert [p["rerank"] for p in params] == [3] * 4 and params[0]["clip"] == str(clip / "best")
    # Each prompt's two kept images: its best candidates first, each with the seed that redraws it alone.
    assert params[0]["clip_score"] >= params[1]["clip_score"] and params[2]["clip_score"] >= params[3]["clip_score"]
    assert {p["image_seed"] for p in params[:2]} <= {4, 5, 6} and {p["image_seed"] for p in params[2:]} <= {7, 8, 9}
    alone = cli_ok(capsys, "imagine", t2i, "a cyan square", "--n-images", 1, "--seed", params[3]["image_seed"],
                   "--out", tmp_path / "alone", "--device", "cpu")
    redrawn = np.asarray(Image.open(alone.splitlines()[0])).astype(int)
    kept = np.asarray(Image.open(tmp_path / "r" / "003-a-cyan-square.png")).astype(int)
    # The same tokens (tests/generate/test_imagine.py compares them); decoded in a batch of 6 candidates against 1,
    # the VQ decoder's convolutions can round a pixel 1/255 apart.
    assert np.abs(redrawn - kept).max() <= 1
    scored = cli_ok(capsys, "eval", "text-to-image", t2i, "--n-per-caption", 1, "--max-captions", 2,
                    "--guidance-scales", "1", "--rerank", 2, "--clip", clip, "--device", "cpu")
    assert "each the best of 2 by the reranker" in scored and len(_summary(scored)) == 1


def test_user_errors_are_one_line(runs: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    vq, t2i, _ = runs
    line = cli_fails(capsys, "train", "text-to-image", *DATA, "--resolution", 16, "--image-tokenizer", vq, *TINY)
    assert "16x16" in line and "VQ image tokenizer" in line and "32x32" in line
    assert "must be divisible by 4" in cli_fails(capsys, "train", "image-tokenizer", *DATA, "--resolution", 18,
                                                 "--preset", "vq-tiny", *TINY)
    assert "--image-tokenizer: a flag of --method tokens, not of --method diffusion" in cli_fails(
        capsys, "train", "text-to-image", "--method", "diffusion", *DATA, "--image-tokenizer", vq, *TINY)
    assert "needs --autoencoder" in cli_fails(capsys, "train", "text-to-image", "--method", "diffusion", *DATA, *TINY)
    assert "missing-vq does not exist" in cli_fails(capsys, "train", "text-to-image", *DATA,
                                                 "--image-tokenizer", "missing-vq", *TINY)
    assert "--image-tokenizer is required" in cli_fails(capsys, "train", "text-to-image", *DATA, *TINY)
    assert "more than the model's" in cli_fails(capsys, "imagine", t2i, "a red circle " * 20, "--device", "cpu")
    assert "unknown built-in image set 'cats'" in cli_fails(capsys, "train", "image-tokenizer", "--data",
                                                         "builtin:cats", "--preset", "vq-tiny", *TINY)
    assert "builtin:shapes or builtin:digits" in cli_fails(capsys, "eval", "text-to-image", t2i, "--data",
                                                        "builtin:emoji")
    assert "not a text-to-image model" in cli_fails(capsys, "imagine", vq, "a red circle")
    assert "needs both --clip" in cli_fails(capsys, "imagine", t2i, "a red circle", "--rerank", 4)
    assert "not a CLIP reranker" in cli_fails(capsys, "imagine", t2i, "a red circle", "--rerank", 4, "--clip", t2i)
    assert "--image-tokenizer is required" in cli_fails(capsys, "train", "clip", *DATA, *TINY)


def test_reranker_must_read_the_generators_image_tokenizer(
    runs: tuple[Path, Path, str], clip_run: tuple[Path, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    vq, t2i, _ = runs
    clip, _ = clip_run

    shutil.copytree(clip, tmp_path / "clip")
    other = load_image_tokenizer(vq)  # the same architecture with other weights: codes that mean other things
    with torch.no_grad():
        next(other.parameters()).add_(0.1)
    save_checkpoint(tmp_path / "clip" / "image_tokenizer", other, "vqvae", other.config, None)
    line = cli_fails(capsys, "imagine", t2i, "a red circle", "--n-images", 1, "--rerank", 2, "--clip",
                     tmp_path / "clip")
    assert "different VQ image tokenizers" in line


def test_quickstart_takes_image() -> None:
    args = build_parser().parse_args(["quickstart", "image", "--steps", "3"])
    assert args.what == "image" and args.steps == 3


def test_quickstart_image_runs_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = cli_ok(capsys, "quickstart", "image", "--steps", 2, "--out", tmp_path / "qs")
    assert "shapes alignment" in out and "held-out" in out
    assert (tmp_path / "qs" / "samples" / "grid.png").is_file()
    assert read_data_record(tmp_path / "qs" / "text-to-image")["data"] == "builtin:shapes"
    # Rerunning replaces the earlier run (overwrite), as the other quickstarts do.
    assert "2 steps" in cli_ok(capsys, "quickstart", "image", "--steps", 2, "--out", tmp_path / "qs")
