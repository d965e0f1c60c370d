"""robust-ad: industrial anomaly detection and denoising by inverting adversarially robust networks.

Importing the package is cheap: torch is loaded only by the modules that need it.
"""

__version__ = "0.1.0"
