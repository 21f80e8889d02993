"""The output label values of smoothseg, defined once: 0 background, 1 liver, 2 tumour.

The same values are the class indices of the tumour configuration ({0 outside the liver, 1 liver, 2 tumour}); the
liver configuration has {0 background, 1 liver region}. Raw datasets may use other values; ``dataset.json``'s
``task_regions`` map them onto these.
"""

from __future__ import annotations

BACKGROUND = 0
LIVER = 1
TUMOR = 2

#: Label value -> name, as written into reports, DICOM SEG segments and plots.
LABEL_NAMES = {BACKGROUND: "background", LIVER: "liver", TUMOR: "tumor"}
