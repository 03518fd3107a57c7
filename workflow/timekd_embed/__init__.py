"""TimeKD teacher embeddings: windows, prompts, calibrated GPT-2, subtractive cross attention."""

__version__ = "0.3.0"

# The training API, imported on first use: `import timekd_embed` stays light (no torch).
_LAZY = {"load_embeddings": "loader", "TeacherDataset": "loader"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
