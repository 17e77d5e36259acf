"""Fuzzing of the sans-IO core: a checked driver (``harness``) and atheris entry points (``run``)."""
