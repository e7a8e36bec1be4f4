"""Benchmarks: speed of the training step and inference (speed.py, issue 5), accuracy on LA (la.py)."""
