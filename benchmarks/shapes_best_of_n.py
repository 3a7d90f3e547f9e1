"""Best-of-N on held-out shapes captions: the share of captions with at least one all-correct image among N.

What a perfect reranker (the issue's optional CLIP-style item, not built yet) could reach; the parser is the
oracle here, so this is an upper bound, not a result.

    python benchmarks/shapes_best_of_n.py RUN_DIR [N=8] [GUIDANCE=1.5]
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

from genloom.data.image_sets import load_images, split_images
from genloom.eval.shapes import check_shapes_image
from genloom.generate.imagine import imagine
from genloom.registry import load_text_to_image_model


def main() -> None:
    run = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    scale = float(sys.argv[3]) if len(sys.argv) > 3 else 1.5
    loaded = load_text_to_image_model(run)
    # The benchmark's scenes and split (20,000 scenes, 5 % validation); test = the held-out combinations.
    _, _, test = split_images(load_images("builtin:shapes", 32, 20000), 0.05)
    captions = sorted(set(test.captions))
    random.Random(0).shuffle(captions)
    captions = captions[:64]
    images, _ = imagine(loaded.model, loaded.tokenizer, loaded.vq, captions, n_images=n, guidance_scale=scale,
                        seed=0, progress=False)
    repeated = [c for c in captions for _ in range(n)]
    ok = np.array([check_shapes_image(img, c).all_correct for img, c in zip(images, repeated, strict=True)])
    ok = ok.reshape(len(captions), n)  # (captions, samples)
    print(f"{run}: guidance {scale:g}, {len(captions)} held-out captions: per image {ok.mean():.1%}, "
          f"best of 4 {ok[:, :4].any(1).mean():.1%}, best of {n} {ok.any(1).mean():.1%}")


if __name__ == "__main__":
    main()
