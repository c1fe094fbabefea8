"""Numbers the v6 series uses but does not publish: given, or read from the environment when used."""

from __future__ import annotations

import os

from ..errors import KvmspeError
from ..validation import is_int

__all__ = [
    "ASSUMED",
    "ASSUMED_ENV",
    "Assumed",
    "AssumedNumberError",
    "MODEL_EXIT_RLIMIT",
    "accepted_range",
    "check_assumed",
    "set_assumed",
]

# --- assumed numbers -------------------------------------------------------------

#: kvmspe's own number for KVM_EXIT_RLIMIT while the user gives none: the
#: series (patch 32) does not publish it, and every number up to 43 is an
#: upstream exit in Linux 7.2 (42, the old guess, is KVM_EXIT_ARM_LDST64B).
#: 0x10000 lies far above upstream's exits (they grow by a few a year), so
#: on a real kernel it matches nothing: a real KVM_EXIT_RLIMIT shows as its
#: raw number until the user gives it. The model is its own kernel and
#: reports its RLIMIT exit with this number; that is the only place it
#: comes from, so both backends agree.
MODEL_EXIT_RLIMIT = 0x10000

#: The width of each assumed number, for refusing absurd values:
#: kvm_vcpu_init.features[7] holds 224 bits; a capability is an ioctl
#: argument the kernel reads as an int; an exit reason is a __u32.
_LIMITS = {
    "spe_feature_bit": (0, 32 * 7 - 1),
    "cap_arm_spe": (0, (1 << 31) - 1),
    "exit_rlimit": (0, (1 << 32) - 1),
}
_ENV = {
    "spe_feature_bit": "KVMSPE_SPE_FEATURE_BIT",
    "cap_arm_spe": "KVMSPE_CAP_ARM_SPE",
    "exit_rlimit": "KVMSPE_EXIT_RLIMIT",
}
#: Assumed number -> the environment variable that gives it.
ASSUMED_ENV: dict[str, str] = dict(_ENV)
#: The longest accepted spelling of a number (decimal or 0x hex) in the environment.
_MAX_DIGITS = 12


class AssumedNumberError(KvmspeError, ValueError):
    """An assumed number (given to :func:`set_assumed` or in a ``KVMSPE_*``
    environment variable) is not acceptable: out of its field's range, or a
    number upstream Linux already uses for something else."""


def _collision(name: str, value: int) -> str | None:
    """Why ``value`` cannot be the assumed number ``name``, or None."""
    from . import upstream

    if name == "spe_feature_bit":
        taken = upstream.ARM64_VCPU_FEATURES.get(value)
        if taken is not None:
            return (
                f"bit {value} is {taken[0]} upstream (since Linux {taken[1]}); the SPE feature"
                f" cannot be any of bits 0..{max(upstream.ARM64_VCPU_FEATURES)}"
            )
    elif name == "cap_arm_spe":
        what = upstream.cap_name(value)
        if what is not None:
            return f"{value} is {what} upstream; KVM_CAP_ARM_SPE must be above {upstream.CAP_MAX}"
    elif name == "exit_rlimit":
        taken = upstream.EXITS.get(value)
        if taken is not None:
            return f"{value} is {taken[0]} upstream (since Linux {taken[1]}), not KVM_EXIT_RLIMIT"
        from ..assumptions import DEFAULT

        if value == DEFAULT.idle_exit:
            return f"{value} is the exit the model returns when its guest is idle"
    return None


def accepted_range(name: str) -> tuple[int, int, str]:
    """The numbers :func:`check_assumed` accepts for ``name``, which are one
    range: ``(lo, hi, why)``, ``why`` saying in words what lies below ``lo``.

    Below ``lo`` every number is taken upstream (or is the model's idle exit);
    ``hi`` is the top of the number's field. The exports state this range, so
    that they accept exactly what kvmspe accepts.
    """
    from ..assumptions import DEFAULT
    from . import upstream

    if name not in _ENV:
        raise AssumedNumberError(f"unknown assumed number {name!r}; accepted: {', '.join(_ENV)}")
    field_lo, hi = _LIMITS[name]
    taken, what = {
        "spe_feature_bit": (set(upstream.ARM64_VCPU_FEATURES), "upstream VCPU features"),
        "cap_arm_spe": (set(range(upstream.CAP_MAX + 1)), "upstream capabilities"),
        "exit_rlimit": ({*upstream.EXITS, DEFAULT.idle_exit}, "upstream exits"),
    }[name]
    lo = max(field_lo, max(taken) + 1)
    return lo, hi, f"{field_lo}..{lo - 1} are {what}, and {hi} is the largest its field holds"


def check_assumed(name: str, value: object) -> int:
    """``value`` as the assumed number ``name``, or :class:`AssumedNumberError` saying why not."""
    if name not in _ENV:
        raise AssumedNumberError(f"unknown assumed number {name!r}; accepted: {', '.join(_ENV)}")
    lo, hi = _LIMITS[name]
    if not is_int(value) or not lo <= value <= hi:
        raise AssumedNumberError(f"{name} must be an integer in {lo}..{hi:#x}, got {value!r}")
    why = _collision(name, value)
    if why is not None:
        raise AssumedNumberError(f"{name}={value} refused: {why}")
    return value


def _parse_env(var: str, raw: str) -> int:
    """A decimal or 0x-hex number of at most :data:`_MAX_DIGITS` ASCII digits."""
    text = raw.strip()
    hexa = text[:2].lower() == "0x"
    digits = text[2:] if hexa else text
    allowed = "0123456789abcdefABCDEF" if hexa else "0123456789"
    if not digits or len(digits) > _MAX_DIGITS or any(c not in allowed for c in digits):
        raise AssumedNumberError(
            f"{var}={raw[:40]!r}: expected a decimal or 0x-hex number of at most {_MAX_DIGITS} digits"
        )
    return int(digits, 16 if hexa else 10)


class Assumed:
    """Numbers the v6 series uses but does not publish in what we have [assumed].

    Each is, in this order: a value given to :func:`set_assumed`; else the
    environment variable (read and checked when the number is used, not at
    import); else the default. None of the defaults is a number upstream
    Linux uses (see :mod:`kvmspe.abi.upstream`), and a given number that is one
    is refused with :class:`AssumedNumberError`.

    * ``spe_feature_bit``: the ``KVM_ARM_VCPU_SPE`` bit for KVM_ARM_VCPU_INIT
      (``KVMSPE_SPE_FEATURE_BIT``). Default None: the real backend finds it by
      probing, and when no bit makes the SPE group answer, the kernel has no
      SPE VCPU feature. Older revisions used 7, then 8; both are taken.
    * ``cap_arm_spe``: ``KVM_CAP_ARM_SPE`` (``KVMSPE_CAP_ARM_SPE``). Default
      None: not asked; it decides nothing. Older revisions used 191, then 208.
    * ``exit_rlimit``: ``KVM_EXIT_RLIMIT`` (series patch 32,
      ``KVMSPE_EXIT_RLIMIT``). Default :data:`MODEL_EXIT_RLIMIT`.
    """

    _DEFAULTS: dict[str, int | None] = {
        "spe_feature_bit": None,
        "cap_arm_spe": None,
        "exit_rlimit": MODEL_EXIT_RLIMIT,
    }

    def __init__(self) -> None:
        self._given: dict[str, int | None] = {}
        self._env_cache: dict[str, tuple[str, int]] = {}

    def _get(self, name: str) -> int | None:
        if name in self._given:
            return self._given[name]
        var = _ENV[name]
        raw = os.environ.get(var)
        if raw is None or raw == "":
            return self._DEFAULTS[name]
        cached = self._env_cache.get(var)
        if cached is not None and cached[0] == raw:
            return cached[1]
        try:
            value = check_assumed(name, _parse_env(var, raw))
        except AssumedNumberError as exc:
            text = str(exc)
            if not text.startswith(var):
                text = f"{var}={raw[:40]!r}: {text}"
            raise AssumedNumberError(text) from None
        self._env_cache[var] = (raw, value)
        return value

    @property
    def spe_feature_bit(self) -> int | None:
        return self._get("spe_feature_bit")

    @property
    def cap_arm_spe(self) -> int | None:
        return self._get("cap_arm_spe")

    @property
    def exit_rlimit(self) -> int:
        value = self._get("exit_rlimit")
        assert value is not None
        return value

    def source(self, name: str) -> str:
        """Where the number ``name`` comes from: "set_assumed", the variable's name, or "default"."""
        if name in self._given:
            return "set_assumed"
        return _ENV[name] if os.environ.get(_ENV[name]) else "default"

    def check(self) -> None:
        """Read and check every number now (e.g. the environment, before a command starts)."""
        for name in _ENV:
            self._get(name)

    def as_dict(self) -> dict[str, int | None]:
        return {name: self._get(name) for name in _ENV}

    def reset(self) -> None:
        """Forget values given to :func:`set_assumed` (back to environment and defaults)."""
        self._given.clear()

    def __repr__(self) -> str:
        return f"Assumed({', '.join(f'{k}={v!r}' for k, v in self._given.items())})"


ASSUMED = Assumed()


def set_assumed(**values: int | None) -> None:
    """Give assumed numbers, e.g. ``set_assumed(exit_rlimit=0x20000)``; ``None``
    goes back to the environment or default. All are checked before any is
    set: a bad one raises :class:`AssumedNumberError` and changes nothing."""
    checked = {
        name: (None if value is None and name in _ENV else check_assumed(name, value))
        for name, value in values.items()
    }
    for name, value in checked.items():
        if value is None:
            ASSUMED._given.pop(name, None)
        else:
            ASSUMED._given[name] = value
