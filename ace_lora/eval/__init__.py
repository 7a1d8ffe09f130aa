"""Evaluation: metrics, zero-shot classification and grounding; returns data, draws nothing (layers: ``common``)."""
