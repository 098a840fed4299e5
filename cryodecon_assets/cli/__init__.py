"""The ``cryodecon`` command line (entry point ``cryodecon_assets.cli.main:main``)."""
