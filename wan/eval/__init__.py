"""Evaluation, not engine: the tiny world, its tokenizer, the adherence detector and video metrics.

Nothing in the inference engine imports this package; scripts/compare.py and scripts/train_tiny.py do.
"""
