"""Intake: the storage sensor and sweep, and the batching rules and manifests they cut."""
