"""The engine: knows models, never draws."""
