"""curate: a DVC-driven template for data-centric image classification."""

__version__ = "0.1.0"
