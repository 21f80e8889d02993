"""Synthetic CT phantoms and the demo dataset built from them (for the demo, tests and benchmarks)."""

from smoothseg.synthetic.demo_dataset import DEMO_DATASET_ID, load_truth, make_demo_dataset
from smoothseg.synthetic.phantom import Phantom, make_phantom

__all__ = ["DEMO_DATASET_ID", "Phantom", "load_truth", "make_demo_dataset", "make_phantom"]
