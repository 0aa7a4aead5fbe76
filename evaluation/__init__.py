"""Evaluation, not engine: the tiny world, the adherence detector, motion and video metrics.

Nothing in the ``wan`` inference package imports this one; the scripts (compare, calibrate_cache,
train_tiny, train_tiny_lora) and the tests do.
"""
