"""kdlab: reproducible knowledge-distillation studies."""
__version__ = "0.1.0"
