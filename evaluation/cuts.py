"""Scene cuts of the input, found by the engine's own detector (pipeline/temporal.py), so the
metrics skip exactly the pairs the engine treats as a new shot."""

from __future__ import annotations

import numpy as np

from pipeline.temporal import SceneCutDetector


class CutTracker:
    """Feed input frames in order; `update` says whether a frame starts a new shot."""

    def __init__(self, threshold: float) -> None:
        self._detector = SceneCutDetector(threshold)
        self.cuts: list[int] = []

    def update(self, index: int, frame: np.ndarray) -> bool:
        if self._detector.update(frame):
            self.cuts.append(index)
            return True
        return False
