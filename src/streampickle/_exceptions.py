"""Errors raised by streampickle's async readers, beyond those of ``pickle``."""

from __future__ import annotations

import pickle

__all__ = ["LimitExceeded"]


class LimitExceeded(pickle.UnpicklingError):
    """A pickle being read claimed or needed more than a read limit allows.

    Raised *before* the bytes are read or a buffer of the claimed size is allocated.
    ``limit`` is the keyword argument's name (``"max_frame_size"``, ``"max_object_size"`` or
    ``"max_line_length"``), ``size`` the size the pickle claimed or reached and ``maximum`` the
    limit's value. A subclass of ``pickle.UnpicklingError``, so code that handles bad pickles
    handles it too.
    """

    def __init__(self, what: str, size: int, limit: str, maximum: int) -> None:
        super().__init__(f"{what} of {size} bytes exceeds {limit} ({maximum})")
        self.limit = limit
        self.size = size
        self.maximum = maximum
