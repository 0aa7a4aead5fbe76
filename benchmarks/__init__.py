"""What the benchmark scripts share; each script in ``scripts/`` is a command line over these modules.

- ``weights``: model parts at their real size with random weights (time does not depend on values).
- ``measure``: synchronised clocks, peak memory, the matmul peak, forwards counted by hooks, FLOPs.
- ``plan``: what a run will do, read from the engine's plan (steps per expert, sequence lengths);
  the 40-step projection.
- ``peers``: diffusers' own pipeline per task, assembled on the same parts and timed the same way.
- ``modes``: our configurations (placement, levers, presets) and which of them this device can run.
- ``ours``: a mode built by the engine (``wan.engine.build_engine``) on the parts, timed end to end.
- ``report``: the JSON written after every stage, ratios to the peer, the printed table.
- ``end_to_end``: one run of the peer and the modes (``scripts/bench_e2e.py``).

A new task is a ``Peer`` subclass in ``peers.PEERS`` (its diffusers pipeline and call inputs) plus its
parts in ``weights``; a new configuration of ours is an entry in ``modes.MODES``.
"""
