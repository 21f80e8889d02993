"""Synthetic clinical variables modelled on HCC-TACE-Seg's spreadsheet.

Some columns carry information about the case's tumour-to-liver volume ratio (TLVR), with noise, so
the TLVR regression has something real to learn; others are independent of it. The TLVR itself is
never a column. A few numeric cells are left blank, as in real registries.
"""

from __future__ import annotations

import numpy as np

#: Feature columns written to ``clinical.csv`` and declared in ``dataset.json`` (case id column excluded).
FEATURES: tuple[str, ...] = ("Age", "Sex", "AFP", "Tr_Size", "T_involvment", "CLIP_Score", "BCLC", "Okuda",
                             "Evidence_of_cirh")
CATEGORICAL: tuple[str, ...] = ("Sex", "BCLC")
_MAY_BE_MISSING = ("AFP", "Tr_Size", "CLIP_Score", "Okuda", "Evidence_of_cirh")
MISSING_RATE = 0.06
#: How much the clinical variables know about the tumour burden by default (see :func:`clinical_row`).
DEFAULT_SIGNAL = 1.0


def clinical_row(rng: np.random.Generator, tlvr: float, max_diameter_mm: float, signal: float = DEFAULT_SIGNAL,
                 decoy_rng: np.random.Generator | None = None) -> dict[str, object]:
    """One patient's clinical variables; ``tlvr`` and ``max_diameter_mm`` are the phantom's truth.

    ``signal`` sets how much the variables know about the tumour burden (:data:`DEFAULT_SIGNAL` 1: the demo's data):
    below 1 the variables see a mix of the true burden and a decoy burden drawn from ``decoy_rng`` (weight ``signal``
    on the truth; 0: no information at all); above 1 their noise shrinks by that factor. Out-of-fold R² of the TLVR
    regression on 300 simulated patients (``tests/test_synthetic.py``): about 0 at 0, 0.5 at 0.5, 0.8 at 1, 0.86 at
    2 (the features' rounding limits it). The draws from ``rng`` are the same whatever the signal.
    """
    if not signal >= 0:
        raise ValueError(f"clinical signal must be >= 0, got {signal}")
    if signal < 1:
        if decoy_rng is None:
            raise ValueError("a clinical signal below 1 needs a decoy_rng")
        weight = float(signal)
        decoy_tlvr = float(decoy_rng.beta(0.6, 6.0))
        decoy_diameter = float(decoy_rng.uniform(5.0, 120.0)) if decoy_rng.uniform() < 0.8 else 0.0
        tlvr = weight * tlvr + (1 - weight) * decoy_tlvr
        max_diameter_mm = weight * max_diameter_mm + (1 - weight) * decoy_diameter
    noise = 1.0 / max(float(signal), 1.0)
    burden = float(np.sqrt(max(tlvr, 0.0)))  # ~0..0.7, spreads small ratios apart
    row: dict[str, object] = {
        "Age": int(np.clip(round(rng.normal(64, 10)), 30, 90)),
        "Sex": "M" if rng.uniform() < 0.78 else "F",
        "AFP": round(float(10 ** (0.8 + 3.0 * burden + rng.normal(0, 0.45 * noise))), 1),
        "Tr_Size": round(max(0.0, max_diameter_mm / 10 + rng.normal(0, 0.6 * noise)), 1) if max_diameter_mm else 0.0,
        "T_involvment": 2 if tlvr + rng.normal(0, 0.05 * noise) > 0.2 else 1,
        "CLIP_Score": int(np.clip(round(0.5 + 6 * burden + rng.normal(0, 0.7 * noise)), 0, 6)),
        "BCLC": "ABCD"[int(np.clip(round(0.3 + 4 * burden + rng.normal(0, 0.5 * noise)), 0, 3))],
        "Okuda": int(np.clip(round(1 + 2.5 * burden + rng.normal(0, 0.5 * noise)), 1, 3)),
        "Evidence_of_cirh": int(rng.uniform() < 0.7),
    }
    for col in _MAY_BE_MISSING:
        if rng.uniform() < MISSING_RATE:
            row[col] = None
    return row
