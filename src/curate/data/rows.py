"""Reading rows of a memory-mapped store in the order asked, one way for every reader."""

from __future__ import annotations

from typing import Any

import numpy as np


def read_rows(images: Any, index: np.ndarray) -> np.ndarray:
    """Rows ``index`` of ``images`` (an array or a memory-map), in that order, as a new array.

    The rows are read in sorted order and put back in the order asked: a memory-map then reads
    its pages in sequence instead of seeking back and forth.
    """
    order = np.argsort(index, kind="stable")
    out = np.empty((len(index), *images.shape[1:]), dtype=images.dtype)
    out[order] = images[index[order]]
    return out
