"""Pipelines: register, train, evaluate, demo. They use the tensor and image layers."""
