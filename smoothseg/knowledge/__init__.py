"""Knowledge from outside the image: the clinical TLVR regression and its cross-fitted weak labels.

``smoothseg.knowledge.tlvr`` owns the tumour-to-liver volume ratio (TLVR) regressor, the cross-fitting
that gives every training case a prediction from a model that never saw it, and the helpers the
trainer uses to decide whether the TLVR loss term can be switched on.
"""

from smoothseg.knowledge.tlvr import (
    TLVRRegressor,
    describe_availability,
    tlvr_from_labels,
    tlvr_scores,
)

__all__ = ["TLVRRegressor", "describe_availability", "tlvr_from_labels", "tlvr_scores"]
