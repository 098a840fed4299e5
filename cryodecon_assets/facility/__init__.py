"""Facility assets: structure library upkeep, the ImpactFore model, score weights, daily summaries, reference data."""
