"""Placement `process`: each model's engine in a worker process of its own."""
