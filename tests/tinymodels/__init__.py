"""Tiny models of the real neural architectures (random weights), built and saved by the tests
through the same files users load: nothing is downloaded."""
