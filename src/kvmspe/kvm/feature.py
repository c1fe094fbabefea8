"""The SPE VCPU feature bit: which bit it is, how that was decided, and what refusals of it mean.

The v6 series does not publish the bit, and the bits its older revisions
used are other features upstream now: it is given by the user
(``spe_feature_bit=``, ``KVMSPE_SPE_FEATURE_BIT``, :func:`kvmspe.abi.set_assumed`)
or probed by :meth:`kvmspe.kvm.Kvm.spe_feature` among
:data:`SPE_FEATURE_CANDIDATES`; :class:`SpeFeature` is the answer. When no
bit is found the backend says so (:class:`SpeFeatureUnavailable`) and never
sets a guessed bit.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from ..errors import KvmError

__all__ = [
    "SPE_FEATURE_CANDIDATES",
    "SpeFeature",
    "SpeFeatureUnavailable",
    "feature_bits",
    "init_refused",
    "no_feature_reason",
]

#: Candidate bits for the SPE VCPU feature when probing: KVM_ARM_VCPU_INIT
#: takes features only in features[0] (every kernel refuses a bit in
#: features[1..6]), and bits 0..8 are upstream features (kvmspe.abi.upstream).
SPE_FEATURE_CANDIDATES: tuple[int, ...] = tuple(range(9, 32))


class SpeFeatureUnavailable(KvmError):
    """No SPE VCPU feature bit is known for this kernel: none was given and
    probing found none. Raised by :meth:`Vm.create_vcpu` with ``spe=True``
    on arm64 before any ioctl (so no VCPU id is used up); ``errno`` is
    EOPNOTSUPP."""


@dataclass(frozen=True)
class SpeFeature:
    """The SPE VCPU feature bit of a kernel, and how it was decided.

    ``bit`` is None when the kernel has no SPE VCPU feature (as far as
    probing can tell). ``source`` is "argument", "set_assumed",
    "KVMSPE_SPE_FEATURE_BIT", "probed" or "none"; ``reason`` one line for
    people; ``tried`` each probed bit with what the kernel answered.
    """

    bit: int | None
    source: str
    reason: str
    tried: tuple[tuple[int, str], ...] = field(default_factory=tuple)

    @property
    def answers(self) -> str:
        """What the kernel answered to the probed bits, in words, e.g. ``bits
        9..31: unknown to this kernel (KVM_ARM_VCPU_INIT refuses them)``
        (empty when nothing was probed); ``tried`` has each errno."""
        return _answers(self.tried)


def no_feature_reason() -> str:
    """One line: no probed bit made the SPE group answer."""
    first, last = SPE_FEATURE_CANDIDATES[0], SPE_FEATURE_CANDIDATES[-1]
    return (
        "this kernel has no SPE VCPU feature: no KVM_ARM_VCPU_INIT feature bit"
        f" ({first}..{last}) makes the KVM_ARM_VCPU_SPE_CTRL group answer;"
        " set KVMSPE_SPE_FEATURE_BIT if it has one"
    )


#: How the probe's answers read for people: what an INIT refusal means, not
#: the errno of a feature that is not SPE (``SpeFeature.tried`` keeps it).
_ANSWER_WORDS = {
    "KVM_ARM_VCPU_INIT ENOENT": "unknown to this kernel (KVM_ARM_VCPU_INIT refuses them)",
    "KVM_ARM_VCPU_INIT EINVAL": "refused by KVM_ARM_VCPU_INIT (unknown or not available here)",
}


def _answers(tried: tuple[tuple[int, str], ...]) -> str:
    """What the kernel answered to each probed bit, in words, runs of bits joined."""
    groups: dict[str, list[int]] = {}
    for bit, answer in tried:
        groups.setdefault(_ANSWER_WORDS.get(answer, answer), []).append(bit)
    parts = []
    for answer, bits in groups.items():
        if len(bits) == 1:
            span = f"bit {bits[0]}"
        elif bits == list(range(bits[0], bits[-1] + 1)):
            span = f"bits {bits[0]}..{bits[-1]}"
        else:
            span = "bits " + ",".join(map(str, bits))
        parts.append(f"{span}: {answer}")
    return "; ".join(parts)


def feature_bits(features: tuple[int, ...] | list[int]) -> list[int]:
    return [32 * w + b for w, word in enumerate(features) for b in range(32) if word >> b & 1]


def init_refused(code: int, bits: list[int], spe_bit: int | None) -> str | None:
    """What a KVM_ARM_VCPU_INIT errno means for the features asked for."""
    from ..abi import upstream

    def show(b: int) -> str:
        name = upstream.feature_name(b)
        if b == spe_bit:
            return f"bit {b} (asked for as the SPE feature)"
        return f"bit {b} ({name})" if name else f"bit {b}"

    asked = ", ".join(show(b) for b in bits) or "no feature bit"
    if code == errno.ENOENT:
        return (
            f"the kernel does not know a VCPU feature asked for ({asked}): KVM_ARM_VCPU_INIT"
            " answers ENOENT for an unknown feature bit (Linux 6.1)"
        )
    if code == errno.EINVAL:
        return (
            f"the kernel refused the VCPU features ({asked}): an unknown feature bit (EINVAL on"
            " newer kernels), a feature this host cannot give, features that differ from the"
            " VM's other VCPUs, or a bad target"
        )
    return None
