"""TimeKD teacher embeddings: windows, prompts, calibrated GPT-2, subtractive cross attention."""

__version__ = "0.1.0"
