"""Evaluation: metrics, zero-shot classification, zero-shot grounding and the results report."""
