"""kvmspe: the KVM arm64 SPE max-buffer-size interface, as code.

The package root is kept light (the command line starts from it): it
exports the error types and the version only. Import the layers you need:

* :mod:`kvmspe.arch.maxbuf` - the PMBIDR_EL1.MaxBuffSize codec
* :mod:`kvmspe.arch.registers` - SPE buffer registers as field tables
* :mod:`kvmspe.abi` - ioctl numbers, structs, attribute numbers, errno meanings
* :mod:`kvmspe.model.rules` - the ordered checks that decide every errno
* :mod:`kvmspe.model.assumptions` - what the reference leaves open, decided in one place
* :mod:`kvmspe.model.kernel` - the reference model of the kernel side
"""

from .errors import InvalidArgumentError, KvmError, KvmspeError, NotRepresentableError, RegisterError

__all__ = [
    "InvalidArgumentError",
    "KvmError",
    "KvmspeError",
    "NotRepresentableError",
    "RegisterError",
    "__version__",
]

__version__ = "0.1.0"
