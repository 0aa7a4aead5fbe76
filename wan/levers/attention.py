"""Attention backend lever: diffusers' attention dispatcher (native SDPA, cuDNN, flash, sage, ...)."""

from __future__ import annotations

from wan.config import ConfigError


def set_attention_backend(pipe, backend: str) -> None:
    """Use ``backend`` in both experts; a backend this machine lacks is a one-line error."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    names = [b.value for b in AttentionBackendName]
    if backend not in names:
        raise ConfigError(f"unknown --attention_backend {backend!r}; choose one of: {', '.join(names)}")
    try:
        for expert in pipe.experts.values():
            expert.set_attention_backend(backend)
    except (ValueError, KeyError, RuntimeError, ImportError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--attention_backend {backend} is not available here: {first}") from exc
