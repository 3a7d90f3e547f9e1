"""One training loop for every model family, with its optimizer, schedule, checkpoints and logging."""
