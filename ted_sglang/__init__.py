"""Training-Free Experience Distillation (TED) as an extension of SGLang."""

__version__ = "0.1.0"
