"""The segmentation network (SegResNetVAE) and its sizing helpers; nothing here knows about training."""

from smoothseg.network.segresnet_vae import (
    ResidualBlock,
    SegResNetVAE,
    count_parameters,
    estimate_activation_elements,
    measure_activation_elements,
    required_divisor,
)

__all__ = [
    "ResidualBlock", "SegResNetVAE", "count_parameters", "estimate_activation_elements",
    "measure_activation_elements", "required_divisor",
]
