"""cryodecon's science: image formation, CTF, spectra, causal noise graph, restoration and scores.

Pure functions on numpy/torch arrays and frozen dataclasses with units in every name.  Never imports
Dagster: the orchestration layer (``cryodecon_assets``) calls into this package, not the other way round.
"""

__version__ = "0.1.0"
