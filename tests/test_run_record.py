"""The data record of a run: written with what the data set says about itself, found from any checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genloom.data.builtin_images import OPENMOJI_ATTRIBUTION
from genloom.data.images import ImageCaptionSet
from genloom.run_record import attribution, image_data_record, read_data_record, write_data_record


def test_the_record_carries_the_data_sets_attribution(tmp_path: Path) -> None:
    data = ImageCaptionSet(np.zeros((4, 8, 8, 3), np.uint8), ["a"] * 4, "my-icons", attribution="Icons by Ada")
    record = image_data_record(data.subset([0, 1]), limit=None, val_fraction=0.25)
    assert record["attribution"] == "Icons by Ada" and record["images"] == 2 and record["resolution"] == 8
    write_data_record(tmp_path, record)
    assert read_data_record(tmp_path / "best") == record  # a checkpoint finds it in its run directory
    assert attribution(record) == "Icons by Ada"


def test_records_of_older_runs_credit_openmoji_by_the_data_name() -> None:
    assert attribution({"data": "builtin:emoji"}) == OPENMOJI_ATTRIBUTION
    assert attribution({"data": "builtin:shapes", "image_tokenizer_data": "builtin:emoji"}) == OPENMOJI_ATTRIBUTION
    assert attribution({"data": "builtin:shapes", "attribution": None}) is None
    assert read_data_record(Path("/nonexistent/checkpoint")) == {}
