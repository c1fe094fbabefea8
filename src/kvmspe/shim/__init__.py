"""The shim: kvmspe's model in front of a real KVM, for processes that know nothing of kvmspe.

``shim.c`` is preloaded (``LD_PRELOAD``) into a VMM; it intercepts the KVM
ioctls the SPE interface touches and asks :class:`~kvmspe.shim.server.ModelServer`,
which answers with kvmspe's model; everything else reaches the kernel.
:mod:`~kvmspe.shim.launch` runs a command that way and returns the
:mod:`~kvmspe.shim.transcript`; :mod:`~kvmspe.shim.build` compiles the shim;
:mod:`~kvmspe.shim.script` reads the faults and the guest's script. The
scripted guest as kvmspe's own real backend reaches it is the backend's
(:mod:`kvmspe.kvm.guest`). See ``docs/shim.md``.
"""
