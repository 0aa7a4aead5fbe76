"""The attention lever on the CPU: flash_4, flash_3 and sage wiring through stand-in kernels, and their one-line
errors."""

import copy
import functools
import re
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from tiny_models import as_components

from wan.errors import ConfigError
from wan.levers import Levers, apply_levers
from wan.levers import attention as attention_lever
from wan.settings import GenerationSettings
from wan.text2video import WanT2V

SETTINGS = GenerationSettings(prompt="a red square moving left", seed=5, size="32*32", frame_num=9, sample_steps=4)


class Calls(list):
    broken: bool


def sdpa_nhd(q, k, v, scale=None, causal=False):
    """PyTorch's attention on the (batch, tokens, heads, dim) layout the stand-in kernels take."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale, is_causal=causal
    )
    return out.transpose(1, 2).contiguous()


def assert_every_attention_runs_through(test_config, parts, backend, calls):
    """``backend`` keeps the video of PyTorch's attention and its kernel saw every attention call."""
    plain = WanT2V(test_config, as_components(copy.deepcopy(parts)))
    baseline = plain.generate(SETTINGS, progress=False).video
    pipe = WanT2V(test_config, as_components(copy.deepcopy(parts)))
    apply_levers(pipe, Levers(attention_backend=backend))
    video = pipe.generate(SETTINGS, progress=False).video
    torch.testing.assert_close(video, baseline, rtol=1e-4, atol=1e-4)
    layers = sum(e.config.num_layers for e in pipe.experts.values()) // 2  # each step runs one expert
    assert len(calls) >= 2 * SETTINGS.sample_steps * layers  # self- and cross-attention, cond and uncond


@pytest.fixture(autouse=True)
def fresh_kernel_checks():
    """Each test sees the kernel self-checks of its own stand-ins, not a cached answer from another test."""
    attention_lever._kernel_problem.cache_clear()
    yield
    attention_lever._kernel_problem.cache_clear()


def install_stand_ins(monkeypatch, gpu_check: str, modules: dict[str, types.ModuleType]) -> None:
    """Put stand-in packages where imports find them and let ``gpu_check`` pass on this CPU."""
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(attention_lever.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(attention_lever, gpu_check, lambda device: True)


def assert_one_opaque_op_under_fullgraph_compile(kernel) -> None:
    """``kernel`` (NHD q, k, v) traces as one call: a graph break would fail ``fullgraph`` compilation."""
    q, k, v = (torch.randn(1, 16, 2, 8) for _ in range(3))

    def attend(q, k, v):
        return kernel(q, k, v) * 2

    torch._dynamo.reset()
    compiled = torch.compile(attend, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(q, k, v), attend(q, k, v))
    torch._dynamo.reset()


@pytest.fixture
def stand_in_flash_4(monkeypatch):
    """A ``flash_attn.cute`` whose kernel is SDPA on flash's (batch, tokens, heads, dim) layout; counts its calls."""
    calls = Calls()

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
        if calls.broken:
            raise RuntimeError("cutlass DSL: no cu13 runtime\nlong trace")
        calls.append(q.shape)
        return sdpa_nhd(q, k, v, softmax_scale, causal), None  # flash-attn returns (out, lse)

    package, cute = types.ModuleType("flash_attn"), types.ModuleType("flash_attn.cute")
    package.__path__, package.__spec__ = [], None
    cute.flash_attn_func = flash_attn_func
    package.cute = cute
    calls.broken = False
    install_stand_ins(monkeypatch, "hopper_or_newer", {"flash_attn": package, "flash_attn.cute": cute})
    return calls


def test_flash_4_runs_every_attention_through_the_kernel(test_config, parts, stand_in_flash_4):
    assert_every_attention_runs_through(test_config, parts, "flash_4", stand_in_flash_4)


def test_flash_4_is_one_opaque_op_under_fullgraph_compile(stand_in_flash_4):
    assert_one_opaque_op_under_fullgraph_compile(
        lambda q, k, v: torch.ops.wan.flash_attention_4(q, k, v, softmax_scale=None, causal=False)
    )


def test_flash_4_without_the_package_is_one_line(test_config, parts, monkeypatch):
    monkeypatch.setattr(attention_lever, "hopper_or_newer", lambda device: True)
    monkeypatch.setattr(attention_lever.importlib.util, "find_spec", lambda name: None)
    pipe = WanT2V(test_config, as_components(copy.deepcopy(parts)))
    with pytest.raises(ConfigError, match="flash_4: it needs the flash-attn-4 package; pip install flash-attn-4"):
        apply_levers(pipe, Levers(attention_backend="flash_4"))


def test_flash_4_on_a_cpu_is_one_line(test_config, parts):
    pipe = WanT2V(test_config, as_components(copy.deepcopy(parts)))
    with pytest.raises(ConfigError, match="flash_4: it needs a Hopper or newer GPU; run without it"):
        apply_levers(pipe, Levers(attention_backend="flash_4"))


def test_a_broken_flash_4_install_falls_back_by_default_and_fails_when_asked(test_config, parts, stand_in_flash_4):
    stand_in_flash_4.broken = True
    cpu = torch.device("cpu")
    assert attention_lever.default_attention_backend(cpu) is None
    pipe = WanT2V(test_config, as_components(copy.deepcopy(parts)))
    with pytest.raises(ConfigError, match=r"flash_4: flash-attn-4 failed on this GPU \(cutlass DSL: no cu13 runtime\)"):
        apply_levers(pipe, Levers(attention_backend="flash_4"))


def test_a_working_flash_4_is_the_default(stand_in_flash_4):
    assert attention_lever.default_attention_backend(torch.device("cpu")) == "flash_4"
    assert attention_lever.default_attention_backend(torch.device("cpu"), parallel=True) is None


@pytest.fixture
def stand_in_flash_3(monkeypatch):
    """A ``flash_attn_interface`` (flash_attn_3's module) whose kernel is SDPA on the NHD layout; counts its calls.
    The machine passes for a Hopper GPU."""
    calls = Calls()

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False, **options):
        if calls.broken:
            raise RuntimeError("no kernel image is available for execution on the device\nlong trace")
        calls.append(q.shape)
        return sdpa_nhd(q, k, v, softmax_scale, causal)

    interface = types.ModuleType("flash_attn_interface")
    interface.flash_attn_func = flash_attn_func
    calls.broken = False
    install_stand_ins(monkeypatch, "hopper", {"flash_attn_interface": interface})
    return calls


def test_flash_3_runs_every_attention_through_the_kernel(test_config, parts, stand_in_flash_3):
    assert_every_attention_runs_through(test_config, parts, "flash_3", stand_in_flash_3)


def test_flash_3_is_one_opaque_op_under_fullgraph_compile(stand_in_flash_3):
    assert_one_opaque_op_under_fullgraph_compile(
        lambda q, k, v: attention_lever._flash_3_hub_kernel(q=q, k=k, v=v, softmax_scale=None, causal=False)
    )


def test_flash_3_refuses_what_it_would_silently_drop(stand_in_flash_3):
    q, k, v = (torch.randn(1, 16, 2, 8) for _ in range(3))
    for options in ({"softcap": 30.0}, {"window_size": (64, 64)}, {"return_attn_probs": True}):
        with pytest.raises(ValueError, match="runs full attention"):
            attention_lever._flash_3_hub_kernel(q, k, v, **options)
    assert not stand_in_flash_3


def test_flash_3_off_hopper_or_without_the_package_is_one_line(test_config, parts, monkeypatch):
    pipe = WanT2V(test_config, as_components(copy.deepcopy(parts)))
    with pytest.raises(ConfigError, match=r"^--attention_backend flash_3: it needs a Hopper GPU \(H100, H200\); run"):
        apply_levers(pipe, Levers(attention_backend="flash_3"))
    monkeypatch.setattr(attention_lever, "hopper", lambda device: True)
    monkeypatch.setattr(attention_lever.importlib.util, "find_spec", lambda name: None)
    why = attention_lever.local_kernel_problem("flash_3", torch.device("cuda"))
    assert why.startswith("it needs the flash_attn_3 package") and "\n" not in why


def test_a_broken_flash_3_install_falls_back_by_default_and_fails_when_asked(test_config, parts, stand_in_flash_3):
    stand_in_flash_3.broken = True
    assert attention_lever.default_attention_backend(torch.device("cpu")) is None
    pipe = WanT2V(test_config, as_components(copy.deepcopy(parts)))
    with pytest.raises(
        ConfigError, match=r"flash_3: flash_attn_3 failed on this GPU \(no kernel image .*\); reinstall"
    ):
        apply_levers(pipe, Levers(attention_backend="flash_3"))


def test_the_default_is_flash_4_then_flash_3_then_pytorch(stand_in_flash_3, monkeypatch):
    cpu = torch.device("cpu")
    assert attention_lever.default_attention_backend(cpu) == "flash_3"  # FlashAttention 4 is not installed
    assert attention_lever.default_attention_backend(cpu, parallel=True) is None
    monkeypatch.setattr(attention_lever, "flash_4_available", lambda device, parallel=False: True)
    assert attention_lever.default_attention_backend(cpu) == "flash_4"


def test_the_tuned_hopper_tile_applies_only_where_it_was_measured():
    q = torch.zeros(1, 8, 2, 128)
    assert attention_lever.hopper_tile(q, causal=False) is None  # not on a GPU
    tile = attention_lever.HOPPER_HEAD_DIM_128_TILE
    assert tile.tile_n == 128  # the package's key tile: the same sums, so the same video


def test_the_check_runs_once_per_gpu_however_it_is_named(stand_in_flash_4, monkeypatch):
    checked = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    check = functools.cache(lambda backend, device: checked.append((backend, device)))
    monkeypatch.setattr(attention_lever, "_kernel_problem", check)
    monkeypatch.setattr(attention_lever, "nvidia_gpu", lambda device: True)
    for name in ("cuda", "cuda:0", "cuda"):
        assert attention_lever.flash_4_available(torch.device(name))
        assert attention_lever.local_kernel_problem("sage", torch.device(name)) is None
    assert checked == [("flash_4", "cuda:0"), ("sage", "cuda:0")]


@pytest.fixture
def stand_in_sage(monkeypatch):
    """A ``sageattention`` whose ``sageattn`` is SDPA on the NHD layout plus ``calls.error`` relative noise (its
    quantisation); counts its calls; the machine passes for an NVIDIA GPU."""
    calls = Calls()

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None):
        assert tensor_layout == "NHD"
        if calls.broken:
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
        calls.append(q.shape)
        out = sdpa_nhd(q, k, v, sm_scale, is_causal)
        noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
        out = out + calls.error * noise * out.norm() / noise.norm()
        if calls.padded:  # as the package does for head_dim < 64: a slice of its padded output
            out = torch.nn.functional.pad(out, (0, 64 - out.shape[-1]))[..., : out.shape[-1]]
        return out

    package = types.ModuleType("sageattention")
    package.sageattn = sageattn
    calls.broken, calls.error, calls.padded = False, 0.0, False
    install_stand_ins(monkeypatch, "nvidia_gpu", {"sageattention": package})
    return calls


def test_sage_runs_every_attention_through_the_package(test_config, parts, stand_in_sage):
    assert_every_attention_runs_through(test_config, parts, "sage", stand_in_sage)


def test_sage_is_one_opaque_op_under_fullgraph_compile(stand_in_sage):
    assert_one_opaque_op_under_fullgraph_compile(
        lambda q, k, v: attention_lever._sage_hub_kernel(q=q, k=k, v=v, tensor_layout="NHD", is_causal=False)
    )


def test_sage_returns_the_layout_its_fake_promises(stand_in_sage):
    """Compiled graphs check the op's output strides against the fake's: a padded slice broke t2v-tiny's fast preset."""
    stand_in_sage.padded = True
    q, k, v = (torch.randn(1, 12, 2, 32, generator=torch.Generator().manual_seed(i)) for i in range(3))
    torch.library.opcheck(attention_lever.sage_attention, (q, k, v))


@pytest.mark.parametrize(
    ("broken", "error", "problem"),
    [
        (False, 0.04, None),  # the quantised kernel on A14B's shapes: 3.9%
        (False, 0.2, r"sageattention disagrees with PyTorch's attention \(20\.\d% apart\)"),
        (True, 0.0, r"sageattention failed on this GPU \(CUDA error: no kernel image .*\); reinstall it"),
    ],
)
def test_the_sage_self_check_allows_its_quantisation_and_nothing_worse(stand_in_sage, broken, error, problem):
    stand_in_sage.broken, stand_in_sage.error = broken, error
    why = attention_lever.local_kernel_problem("sage", torch.device("cpu"))
    assert why is None if problem is None else re.fullmatch(problem, why)


def test_sage_off_a_gpu_or_without_the_package_is_one_line(test_config, parts, monkeypatch):
    pipe = WanT2V(test_config, as_components(copy.deepcopy(parts)))
    with pytest.raises(ConfigError, match="^--attention_backend sage: it needs an NVIDIA GPU; run without it$"):
        apply_levers(pipe, Levers(attention_backend="sage"))
    monkeypatch.setattr(attention_lever.importlib.util, "find_spec", lambda name: None)
    why = attention_lever.local_kernel_problem("sage", torch.device("cuda"))
    assert why.startswith("it needs the sageattention package") and "\n" not in why
    assert attention_lever.default_attention_backend(torch.device("cpu")) != "sage"
