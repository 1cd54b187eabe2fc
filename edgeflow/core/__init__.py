"""Shared foundations: errors with exit codes, config base, atomic IO, registries, checkpoints."""
