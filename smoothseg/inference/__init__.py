"""Inference: from a trained model and a new CT to a label map.

This sub-package owns everything that happens after training:

* :mod:`smoothseg.inference.sliding_window` — Gaussian-weighted sliding-window prediction with mirroring
  test-time augmentation (nnU-Net style), for any network that maps a patch to logits;
* :mod:`smoothseg.inference.postprocessing` — pure NumPy/SciPy mask helpers: largest connected component, hole
  filling, bounding boxes with millimetre margins, crop/paste;
* :mod:`smoothseg.inference.active_contour` — local, per-lesion morphological Chan-Vese refinement of tumour
  boundaries, with safety checks that never delete a lesion;
* the stage predictor, the liver -> tumour cascade and the export of label maps live in sibling modules.

Nothing is imported here, so importing one submodule does not pull in torch or scikit-image needlessly.
"""
