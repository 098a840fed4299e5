"""File formats: every read and write of the science package happens here."""
