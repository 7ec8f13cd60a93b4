"""Synthetic import directories (``persona generate``) built on the real product catalogs.

See :func:`persona_assets.synthetic.generator.generate_dataset`.
"""

from persona_assets.synthetic.generator import generate_dataset

__all__ = ["generate_dataset"]
