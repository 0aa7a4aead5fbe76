"""The lever protocol and the registry that derives everything else from an ordered list of levers.

Modelled on diffusers' hooks: each lever is a small class that knows its setting (name, type, unset
value), its command-line flag, how a value is checked, where it cannot run, and how it installs itself
on a loaded pipeline from outside the denoising loop; an instance carries one chosen value, as a hook
carries its config. A ``Registry`` holds the levers in the order they are installed and builds from
them the frozen settings dataclass (``Levers``, recorded in the sidecar), the argparse flags, the
benchmarks' mode names, the value, hardware and combination checks and the installation itself, so a
new lever is one class in ``wan.levers.registry``.

Nothing here imports torch or diffusers: a lever imports its implementation module when it is used,
so building the command line stays cheap.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, field, make_dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from wan.errors import ConfigError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class Lever:
    """One speed lever; subclasses set the class attributes and override what differs from the defaults.

    ``value`` is what the settings hold for it: a string (None: unset) or, for a ``Switch``, a bool.
    An empty string is set but off (``--no-fp8``, ``--cache none``): it wins over a preset's value.
    """

    name: ClassVar[str]  # the settings field, the flag (--NAME) and its argparse dest
    kind: ClassVar[type] = str  # the field's type besides None
    default: ClassVar[Any] = None  # the unset value
    help: ClassVar[str] = ""  # the flag's help
    choices: ClassVar[tuple[str, ...]] = ()  # the values it takes, where they are a short list
    gpu_only: ClassVar[bool] = False  # it pays off on a GPU only: presets leave it out elsewhere

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"

    @classmethod
    def add_flags(cls, group: argparse._ActionsContainer) -> None:
        """Its command-line flag(s); unset they are None, so a preset can tell them from a choice."""
        group.add_argument(f"--{cls.name}", default=None, help=cls.help)

    @classmethod
    def from_flag(cls, value: Any) -> Any:
        """The flag's parsed value as a lever value (None: unset)."""
        return value

    @classmethod
    def parse(cls, value: Any) -> Any:
        """A set value, checked (a one-line ``ConfigError``) and normalised; ``True`` is a mode name's bare token."""
        if value is True:
            raise ConfigError(f"a mode's {cls.name} takes a value: {cls.name}=VALUE")
        if cls.choices and value not in cls.choices:
            raise ConfigError(f"unknown --{cls.name} {value!r}; choose one of: {', '.join(cls.choices)}")
        return value

    @classmethod
    def machine_default(cls, device: torch.device, parallel: bool) -> Any:
        """The value an unset lever takes on this machine (None: its plain default)."""
        return None

    @property
    def label(self) -> str:
        """How a preset's note names it."""
        return self.name

    def problem(self, device: torch.device, parallel: bool) -> str | None:
        """Why this value cannot run here (one line), or None. ``parallel``: forwards split over GPUs."""
        return None

    def refusal(self, why: str) -> str:
        """The one-line error for an explicit value that cannot run here."""
        return f"--{self.name}: {why}; run without --{self.name}"

    def conflict(self, levers: Any) -> str | None:
        """The one-line error if this value cannot run together with the other ``levers``, else None."""
        return None

    def apply(self, pipe: Any) -> None:
        """Install the lever on a loaded, placed pipeline."""
        raise NotImplementedError(f"{type(self).__name__} does not say how it is installed")


class Switch(Lever):
    """A lever that is on or off: ``--NAME`` / ``--no-NAME``, a bare token in a mode name."""

    kind = bool
    default = False

    @classmethod
    def add_flags(cls, group: argparse._ActionsContainer) -> None:
        group.add_argument(f"--{cls.name}", action=argparse.BooleanOptionalAction, default=None, help=cls.help)

    @classmethod
    def parse(cls, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{cls.name} is on or off and takes no value; got {value!r}")
        return value


class Registry:
    """Levers in the order they are installed, and everything derived from them."""

    def __init__(self, levers: Sequence[type[Lever]], *, module: str):
        """``module``: where the settings class is importable as ``Levers`` (pickling it needs that)."""
        names = [lever.name for lever in levers]
        if len(set(names)) != len(names):
            raise ValueError(f"two levers share a name: {names}")
        self.levers = tuple(levers)
        self.settings = _settings_class(self.levers, module)

    def __iter__(self) -> Iterator[type[Lever]]:
        return iter(self.levers)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(lever.name for lever in self.levers)

    def with_lever(self, lever: type[Lever], after: str) -> Registry:
        """A new registry with ``lever`` installed right after the lever named ``after``."""
        at = self.names.index(after) + 1
        return Registry((*self.levers[:at], lever, *self.levers[at:]), module=lever.__module__)

    def add_flags(self, group: argparse._ActionsContainer) -> None:
        """Every lever's flag, in installation order."""
        for lever in self.levers:
            lever.add_flags(group)

    def explicit(self, flags: Mapping[str, Any]) -> dict[str, Any]:
        """Lever name -> value from argparse dest names (``vars(args)``); None where the flag is unset."""
        return {lever.name: lever.from_flag(flags.get(lever.name)) for lever in self.levers}

    def parse_mode(self, text: str) -> dict[str, Any]:
        """``fp8/compile/cache=fbc:0.05`` -> {"fp8": "all", "compile": True, "cache": "fbc:0.05"} (benchmark modes).

        A bare token is the lever's ``True``: on for a switch, a bare ``fp8`` is ``fp8=all`` as ``--fp8`` is.
        """
        values: dict[str, Any] = {}
        for token in filter(None, text.split("/")):
            key, has_value, value = token.partition("=")
            if key not in self.names:
                raise ConfigError(f"unknown lever {key!r} in a mode; levers: {', '.join(sorted(self.names))}")
            values[key] = value if has_value else True
        return self.check_values(values)

    def check_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` (lever name -> value) with each set one checked and normalised; unset ones (None, "",
        False) as they are. A one-line error for a value its lever does not take."""
        levers = {lever.name: lever for lever in self.levers}
        return {name: levers[name].parse(value) if value else value for name, value in values.items()}

    def chosen(self, values: Mapping[str, Any]) -> list[Lever]:
        """The levers ``values`` turns on, in installation order, each carrying its value."""
        return [lever(values[lever.name]) for lever in self.levers if values.get(lever.name)]

    def check_combination(self, levers: Any) -> None:
        """A one-line error for a combination of levers that cannot run together."""
        for lever in self.chosen(asdict(levers)):
            if why := lever.conflict(levers):
                raise ConfigError(why)

    def apply(self, pipe: Any, levers: Any) -> None:
        """Install ``levers`` on a loaded, placed pipeline (once; quantisation and compilation are not undone)."""
        levers = replace(levers, **self.check_values(asdict(levers)))
        self.check_combination(levers)
        for lever in self.chosen(asdict(levers)):
            lever.apply(pipe)
        logger.info("levers: %s", ", ".join(f"{k}={v}" for k, v in asdict(levers).items() if v) or "none")


def _settings_class(levers: Sequence[type[Lever]], module: str) -> type:
    """The frozen dataclass of the levers' values, one field per lever in installation order."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    fields = [
        (lever.name, lever.kind if lever.default is not None else lever.kind | None, field(default=lever.default))
        for lever in levers
    ]
    cls = make_dataclass("Levers", fields, namespace={"as_dict": as_dict}, frozen=True)
    cls.__module__ = module
    cls.__doc__ = "Which speed levers a run uses (one field per lever, in installation order); recorded in the sidecar."
    return cls
