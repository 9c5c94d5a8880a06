"""Benchmarks and the librosa reference they share with the tests (not part of the installed package)."""
