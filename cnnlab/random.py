"""cnnlab's one random number generator, used by weight initialisation and dropout.

``manual_seed(s)`` makes a run repeatable; ``get_rng_state``/``set_rng_state`` let a
checkpoint resume the exact random stream.
"""
from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the generator behind initialisation and dropout; returns it."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def generator() -> np.random.Generator:
    return _generator


def get_rng_state() -> dict:
    return _generator.bit_generator.state


def set_rng_state(state: dict) -> None:
    _generator.bit_generator.state = state
