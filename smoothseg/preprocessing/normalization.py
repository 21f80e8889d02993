"""CT intensity normalisation: clip to the planned HU window, then z-score with the planned mean and std; and the
fill value used outside the liver mask."""

from __future__ import annotations

import numpy as np

from smoothseg.planning.plans import ConfigurationPlan, IntensityWindow


def normalize_ct(image: np.ndarray, window: IntensityWindow) -> np.ndarray:
    """``(clip(image, lower, upper) - mean) / std`` as float32."""
    out = np.clip(image.astype(np.float32, copy=False), window.lower, window.upper)
    out -= np.float32(window.mean)
    out /= np.float32(window.std)
    return out


def window_to_unit(image: np.ndarray, window: IntensityWindow) -> np.ndarray:
    """Clip to the window and scale to [0, 1] (for display and active contours)."""
    out = np.clip(image.astype(np.float32, copy=False), window.lower, window.upper)
    return (out - np.float32(window.lower)) / np.float32(window.upper - window.lower)


def outside_fill_value(plan: ConfigurationPlan) -> float:
    """The normalised intensity written outside the liver mask (training loader and inference): the window's lower
    bound."""
    return float(normalize_ct(np.array([plan.window.lower], dtype=np.float32), plan.window)[0])
