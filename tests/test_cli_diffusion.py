"""The latent-diffusion method through the CLI: `train image-autoencoder`, `train text-to-image --method diffusion`,
`imagine` (samplers, negative prompt, img2img, previews) and `eval text-to-image` on a tiny run, and one-line errors
for sampling settings that contradict the checkpoint."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli_fails, cli_ok
from PIL import Image

from genloom.checkpoint import load_training_state
from genloom.cli import main
from genloom.generate.image_io import read_png_metadata
from genloom.registry import LoadedLatentDiffusion, load_image_generator
from genloom.run_record import read_data_record

DATA = ["--data", "builtin:shapes", "--limit", "64"]
TINY = ["--steps", "4", "--batch-size", "8", "--warmup", "1", "--eval-interval", "4", "--eval-batches", "1",
        "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENLOOM_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, str]:
    """(autoencoder run, ddpm denoiser, flow denoiser without caption dropout, what training printed)."""
    root = tmp_path_factory.mktemp("diffusion")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.chdir(root)
        assert main(["train", "image-autoencoder", *DATA, "--preset", "vae-tiny", *TINY, "--out", "vae"]) == 0
        common = [*DATA, "--autoencoder", "vae", "--preset", "dit-tiny", "--vocab-size", "300", *TINY]
        assert main(["train", "text-to-image", "--method", "diffusion", *common, "--prediction", "v_prediction",
                     "--min-snr-gamma", "5", "--out", "ddpm"]) == 0
        assert main(["train", "text-to-image", "--method", "diffusion", *common, "--objective", "flow",
                     "--caption-dropout", "0", "--random-flip", "--dtype", "bf16", "--logit-mean", "0.5",
                     "--logit-std", "0.8", "--out", "flow"]) == 0
    return root / "vae", root / "ddpm", root / "flow", out.getvalue()


def test_training_saves_the_process_the_autoencoder_and_the_ema(runs) -> None:
    _vae, ddpm, flow, printed = runs
    assert printed.count("done: step 4") == 3 and "perplexity" not in printed.split("vae")[-1]
    assert (ddpm / "autoencoder" / "config.json").is_file()  # the VAE travels with the run
    process = json.loads((ddpm / "best" / "config.json").read_text())["model"]["process"]
    assert process["objective"] == "ddpm" and process["prediction"] == "v_prediction"
    assert process["min_snr_gamma"] == 5 and process["caption_dropout"] == 0.1
    assert process["beta_schedule"] == "linear" and process["logit_mean"] == 0  # flags not given: the defaults
    assert (ddpm / "checkpoint-0000004" / "ema.safetensors").is_file()  # diffusion keeps an EMA by default
    # --dtype bf16 trains under autocast (attention in fp32 on CPU: tests/nn/test_attention.py).
    assert load_training_state(flow / "checkpoint-0000004")["train_config"]["dtype"] == "bf16"
    loaded = load_image_generator(flow)
    assert isinstance(loaded, LoadedLatentDiffusion) and loaded.model.config.process.objective == "flow"
    # The flow's training noise levels are the checkpoint's record, like the rest of the process.
    assert (loaded.model.config.process.logit_mean, loaded.model.config.process.logit_std) == (0.5, 0.8)
    assert read_data_record(ddpm)["data"] == "builtin:shapes" and "random_flip" not in read_data_record(ddpm)
    # --random-flip: the training images and their mirrors (the run record says so).
    assert read_data_record(flow)["random_flip"] is True
    assert "--random-flip: each of the" in printed and "mirrored left-right half the time" in printed


def test_imagine_with_each_sampler_records_its_settings(runs, tmp_path: Path, capsys) -> None:
    _, ddpm, flow, _ = runs
    for model, sampler in ((ddpm, "dpm++"), (ddpm, "ddim"), (ddpm, "ddpm"), (flow, "euler")):
        out = tmp_path / sampler
        extra = ["--guidance-scale", "1"] if model == flow else ["--negative-prompt", "a red circle"]
        cli_ok(capsys, "imagine", model, "a blue square", "--n-images", 2, "--steps", 4, "--sampler", sampler,
               *extra, "--out", out, "--device", "cpu")
        params = read_png_metadata(out / "000-a-blue-square.png")["parameters"]
        assert params["steps"] == 4 and params["sampler"] == sampler and params["image_seed"] == 0
        if model == ddpm:
            assert params["negative_prompt"] == "a red circle"
    # No --sampler: the objective's default.
    cli_ok(capsys, "imagine", ddpm, "a blue square", "--n-images", 1, "--steps", 3, "--out", tmp_path / "default")
    assert read_png_metadata(tmp_path / "default" / "000-a-blue-square.png")["parameters"]["sampler"] == "dpm++"


def test_img2img_and_previews(runs, tmp_path: Path, capsys) -> None:
    _, ddpm, _, _ = runs
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(tmp_path / "init.png")
    printed = cli_ok(capsys, "imagine", ddpm, "a red circle", "--n-images", 2, "--steps", 6, "--init-image",
                     tmp_path / "init.png", "--strength", 0.5, "--preview-every", 1, "--out", tmp_path / "out")
    # strength 0.5 of 6 steps runs the last 3, each previewed.
    assert sorted(p.name for p in (tmp_path / "out").glob("preview-*")) == [
        "preview-step-001.png", "preview-step-002.png", "preview-step-003.png"]
    assert "previews: 3 grids" in printed
    params = read_png_metadata(tmp_path / "out" / "000-a-red-circle.png")["parameters"]
    assert params["strength"] == 0.5 and params["init_image"].endswith("init.png")
    # Rerunning replaces the folder, previews included: they are imagine's own files.
    cli_ok(capsys, "imagine", ddpm, "a red circle", "--n-images", 1, "--steps", 2, "--out", tmp_path / "out")
    assert not list((tmp_path / "out").glob("preview-*"))


def test_sampling_settings_that_contradict_the_checkpoint_are_refused(runs, tmp_path: Path, capsys) -> None:
    _, ddpm, flow, _ = runs
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    cases = {
        ("--sampler", "euler"): "does not fit a model trained with the ddpm objective",
        ("--steps", "5000"): "cannot exceed the 1000 timesteps",
        ("--temperature", "0.5"): "--temperature: not for",
        ("--init-image", tmp_path / "small.png"): "is 16x16; the model draws 32x32",
        ("--strength", "0.5"): "pass --init-image too",
    }
    for flags, message in cases.items():
        assert message in cli_fails(capsys, "imagine", ddpm, "a red circle", *flags, "--out", tmp_path / "x")
    assert "needs a model trained with caption dropout" in cli_fails(
        capsys, "imagine", flow, "a red circle", "--guidance-scale", 3, "--out", tmp_path / "x")
    assert "sampler 'ddim' does not fit a model trained with the flow objective" in cli_fails(
        capsys, "imagine", flow, "a red circle", "--sampler", "ddim", "--guidance-scale", 1, "--out", tmp_path / "x")


def test_a_token_model_refuses_the_diffusion_flags(tmp_path: Path, capsys) -> None:
    cli_ok(capsys, "train", "image-tokenizer", *DATA, "--preset", "vq-tiny", *TINY, "--out", "vq")
    cli_ok(capsys, "train", "text-to-image", *DATA, "--image-tokenizer", "vq", "--preset", "dalle-tiny",
           "--vocab-size", "300", *TINY, "--out", "t2i")
    assert "--steps, --preview-every: not for" in cli_fails(capsys, "imagine", "t2i", "a red circle", "--steps", 4,
                                                             "--preview-every", 2)
    assert "--patch-size: a flag of --method diffusion, not of --method tokens" in cli_fails(
        capsys, "train", "text-to-image", *DATA, "--image-tokenizer", "vq", "--patch-size", 1, *TINY, "--out", "x")


def test_a_process_setting_out_of_range_is_a_one_line_error(runs, capsys) -> None:
    vae = runs[0]
    message = cli_fails(capsys, "train", "text-to-image", "--method", "diffusion", *DATA, "--autoencoder", vae,
                        "--objective", "flow", "--logit-std", 0, *TINY, "--out", "x")
    assert "logit_std (0.0)" in message and "must be > 0" in message


def test_a_flag_of_the_other_objective_is_refused(runs, capsys) -> None:
    # It would be stored in the checkpoint's process and never read: a ddpm run "trained at --logit-mean 0.5".
    common = ["train", "text-to-image", "--method", "diffusion", *DATA, "--autoencoder", runs[0], *TINY, "--out", "x"]
    assert "--flow-shift, --logit-mean: a flag of --objective flow, not of --objective ddpm" in cli_fails(
        capsys, *common, "--logit-mean", 0.5, "--flow-shift", 3)
    assert "--schedule: a flag of --objective ddpm, not of --objective flow" in cli_fails(
        capsys, *common, "--objective", "flow", "--schedule", "cosine")
    assert not Path("x").exists()  # refused before anything was written
    assert "--logit-mean: a flag of --method diffusion, not of --method tokens" in cli_fails(
        capsys, "train", "text-to-image", *DATA, "--image-tokenizer", "vq", "--logit-mean", 0.5, *TINY, "--out", "x")


def test_eval_scores_a_diffusion_model_per_steps_and_guidance(runs, capsys) -> None:
    _, ddpm, _, _ = runs
    out = cli_ok(capsys, "eval", "text-to-image", ddpm, "--data", "builtin:digits", "--limit", 100,
                 "--n-per-caption", 1, "--steps", "2,3", "--guidance-scales", "1,2", "--device", "cpu")
    assert "(diffusion method)" in out
    rows = out.split("--- summary\n")[1].splitlines()[1:]
    assert [(r.split()[0], r.split()[1]) for r in rows] == [("2", "1"), ("2", "2"), ("3", "1"), ("3", "2")]


def test_quickstart_image_with_the_diffusion_method(capsys, tmp_path: Path) -> None:
    out = cli_ok(capsys, "quickstart", "image", "--method", "diffusion", "--steps", 2, "--out", tmp_path / "qs")
    assert "--method diffusion" in out and "shapes alignment" in out
    assert (tmp_path / "qs" / "samples" / "grid.png").is_file()
    assert (tmp_path / "qs" / "text-to-image" / "autoencoder" / "config.json").is_file()
    params = read_png_metadata(tmp_path / "qs" / "samples" / "000-a-red-circle.png")["parameters"]
    assert params["sampler"] == "euler" and params["steps"] == 20
