"""The KVM user ABI that kvmspe speaks: ioctl numbers, struct layouts, group
and attribute numbers, and what each errno means for each SPE attribute.

Every number a revision of the SPE series could change lives here, so that a
new revision is a data change. Numbers the series does not state are marked
*assumed* and can be given through :func:`set_assumed` or the environment
(``KVMSPE_SPE_FEATURE_BIT``, ``KVMSPE_CAP_ARM_SPE``, ``KVMSPE_EXIT_RLIMIT``,
read when used); none defaults to a number upstream uses
(:mod:`kvmspe.abi.upstream`).

Sources: ``include/uapi/linux/kvm.h``, ``arch/arm64/include/uapi/asm/kvm.h``
[uapi]; the seed patch [seed] for the SPE group.
"""

from __future__ import annotations

from . import assumed, constants, errnos, exits, ioctl, structs
from .assumed import *  # noqa: F403
from .constants import *  # noqa: F403
from .errnos import *  # noqa: F403
from .exits import *  # noqa: F403
from .ioctl import *  # noqa: F403
from .structs import *  # noqa: F403

#: Every public name of the submodules, each listed once, in its own module's ``__all__``.
__all__: list[str] = []
__all__ += assumed.__all__
__all__ += constants.__all__
__all__ += errnos.__all__
__all__ += exits.__all__
__all__ += ioctl.__all__
__all__ += structs.__all__
