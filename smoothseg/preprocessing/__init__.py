"""Resampling, intensity windowing, cropping, and the per-task preprocessors shared by training and inference."""
