"""benchmarks.measure: the loop probe's inputs and the analytic FLOPs against torch's FLOP counter."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.measure import forward_flops, loop_probe, timed
from benchmarks.weights import A14B_CONFIG, build_expert

SMALL = dict(A14B_CONFIG, num_attention_heads=4, attention_head_dim=32, ffn_dim=320, text_dim=64, num_layers=2)


def test_loop_probe_feeds_the_loop_inputs_then_random_ones():
    calls = []

    class Recorder(torch.nn.Module):
        def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
            calls.append((hidden_states, timestep, encoder_hidden_states))
            return (hidden_states,)

    inputs = {
        "hidden_states": torch.ones(1, 2, 3),
        "timestep": torch.tensor([5.0]),
        "encoder_hidden_states": torch.ones(1, 4, 2),
    }
    probe = loop_probe(Recorder(), inputs, 2, torch.device("cpu"))
    assert [len(probe[k]["seconds"]) for k in ("captured", "random_latents", "random_inputs")] == [2, 2, 2]
    assert len(calls) == 9  # one untimed call, then two timed, per variant
    captured, random_latents, random_inputs = calls[0], calls[3], calls[6]
    assert captured[0] is inputs["hidden_states"] and captured[2] is inputs["encoder_hidden_states"]
    assert (
        not torch.equal(random_latents[0], inputs["hidden_states"])
        and random_latents[2] is inputs["encoder_hidden_states"]
    )
    assert not torch.equal(random_inputs[2], inputs["encoder_hidden_states"])
    assert all(call[1] is inputs["timestep"] for call in calls)
    assert random_inputs[0].shape == inputs["hidden_states"].shape and random_inputs[2].dtype == torch.float32


def test_flops_formula_matches_flop_counter():
    """The analytic count equals torch's FLOP counter over the transformer blocks (math SDPA is countable)."""
    model = build_expert(SMALL, torch.device("cpu"), torch.float32, 0, 0.02)
    hidden = torch.randn(1, 16, 3, 8, 8)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(hidden_states=hidden, timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 512, 64))
    counts = counter.get_flop_counts()
    blocks = sum(sum(counts[f"WanTransformer3DModel.blocks.{i}"].values()) for i in range(SMALL["num_layers"]))
    assert forward_flops(SMALL, tokens=3 * 4 * 4) == blocks


def test_timed_calls_once_per_repeat():
    calls = []
    seconds = timed(lambda: calls.append(1), torch.device("cpu"), 3)
    assert len(seconds) == 3 and len(calls) == 3 and all(s >= 0 for s in seconds)
