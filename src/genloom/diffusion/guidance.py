"""Classifier-free guidance (Ho & Salimans 2022): move the conditional prediction away from the unconditional one."""

from __future__ import annotations

from torch import Tensor


def guide(conditional: Tensor, unconditional: Tensor, scale: float) -> Tensor:
    """unconditional + scale (conditional - unconditional): scale 1 is the conditional model, 0 the unconditional;
    a negative prompt's prediction takes the unconditional's place."""
    return unconditional + scale * (conditional - unconditional)
