"""Wan2.2 text-to-video inference with two-expert routing, half-frame generation and CFG truncation."""
