"""`genloom train image-autoencoder`: a KL autoencoder trained by the shared Trainer, whose checkpoints carry the
latent scale measured at their own validation."""

from __future__ import annotations

from cli_helpers import run_cli

from genloom.registry import load_pretrained
from genloom.train.metrics import read_metrics


def test_train_image_autoencoder_on_digits_saves_its_latent_scale(tmp_path, capsys):
    out = tmp_path / "vae"
    code, printed, err = run_cli(capsys, "train", "image-autoencoder", "--data", "builtin:digits", "--limit", "200",
                                 "--preset", "vae-digits", "--steps", "30", "--eval-interval", "15",
                                 "--batch-size", "16", "--lr", "2e-3", "--device", "cpu", "--out", out)
    assert code == 0, err
    assert "done: step 30" in printed and "latent_scale" in printed
    rows = [r for r in read_metrics(out) if "psnr" in r]
    assert len(rows) == 2 and rows[-1]["psnr"] > rows[0]["psnr"] - 1.0
    assert {"kl", "latent_mean", "latent_std", "latent_scale"} <= set(rows[-1])
    last = max(out.glob("checkpoint-*"))
    loaded = load_pretrained(last)
    assert loaded.family == "vae" and tuple(loaded.model.config.latent_shape) == (4, 4, 4)
    scale = float(loaded.model.latent_scale)
    assert scale != 1.0 and abs(scale - rows[-1]["latent_scale"]) < 1e-4 * scale
