"""ssb-trl: Semantic Soft Bootstrapping for Hugging Face TRL."""

__version__ = "0.1.0"
