"""benchmarks.modes: --modes names, their order and lever suffixes."""

from __future__ import annotations

import pytest

from benchmarks.modes import mode_of, selected_modes


def test_selected_modes_run_in_order_with_the_peer():
    assert selected_modes("cache,default") == ["peer", "default", "cache"]
    assert selected_modes("cache,default~compile") == ["peer", "default~compile", "cache"]
    mode = mode_of("preset_exact~attention_backend=native")
    assert mode.preset == "exact" and mode.levers == {"attention_backend": "native"}
    with pytest.raises(SystemExit, match="unknown lever 'warp'"):
        selected_modes("default~warp")
    with pytest.raises(SystemExit):
        selected_modes("nope")
