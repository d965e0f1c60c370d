"""robust-ad: industrial anomaly detection and denoising by inverting adversarially robust networks.

Importing the package is cheap: torch is loaded only by the modules that need it.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``robust_ad.api`` without importing it first (imported when first used: the runtime does without it)."""
    if name == "api":
        import importlib

        return importlib.import_module("robust_ad.api")
    raise AttributeError(f"module 'robust_ad' has no attribute {name!r}")
