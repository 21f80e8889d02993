"""Binary masks: one :data:`~smoothseg.masks.box.Box` type, connected components, and lesion measures in mm/ml.

Pure NumPy/SciPy, no I/O: used by preprocessing (crop boxes), inference (post-processing, lesion filter, reports)
and evaluation (metrics), so that they all crop, label and measure the same way.
"""
