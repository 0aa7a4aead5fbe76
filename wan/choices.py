"""The values of the choice flags, torch-free so the command line is checked before any heavy import.

The modules that implement each choice import their names from here (``wan.solvers``, ``wan.frames``,
``wan.half_frame``), so the table in ``wan.validation`` and the code can never disagree.
"""

SOLVERS = ("unipc", "dpm++", "euler")
COMPLETIONS = ("repeat", "interpolate", "renoise", "renoise_fresh")
"""How the half-frame latent becomes a full one at the end of the half-frame window.

- ``repeat``: F1,F1,F2,F2,... (the seed's method), on the noisy latent.
- ``interpolate``: linear interpolation in time on the noisy latent.
- ``renoise``: take x0 = x_t - sigma * v from the last half-frame step, interpolate x0 in time,
  and re-noise at the next step's sigma with the full-frame noise drawn from the seed at the start,
  so the full-frame steps see i.i.d. noise (as in training) and the baseline's own noise.
- ``renoise_fresh``: as ``renoise`` but with freshly drawn noise.
"""
POSITIONS = ("contiguous", "stride2")
"""Temporal RoPE positions of the half frames: 0, 1, 2, ... (the model's own) or 0, 2, 4, ..."""
PLAIN_HALF_FRAME_STEPS = "0:"
"""The seed's window, and what ``--enable_half_frame_generation`` alone runs: half frames from the first
step to the expert switch. Narrower windows (``--half_frame_steps``) are measured trade-offs."""
PLACEMENTS = ("auto", "resident", "resident_lean", "offload", "stream")
"""Where the parts live (``wan.placement``); ``auto`` takes the fastest that fits."""
