"""smoothseg: self-configuring liver and liver-tumour segmentation in CT (SmoothSegNet).

The package is organised as one sub-package per pipeline stage; see ``DESIGN.md`` and
``documentation/`` for the data flow. Nothing heavy is imported here, so ``import smoothseg``
stays cheap for the command-line tools.
"""

__version__ = "0.1.0"
