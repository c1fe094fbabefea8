"""Importing kvmspe or any of its modules does no work: it reads no environment,
opens nothing under /proc, /sys or /dev, issues no ioctl and raises nothing."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import kvmspe

SRC = Path(kvmspe.__file__).resolve().parent.parent
#: Every module but ``kvmspe.__main__``, whose import is running the command line.
MODULES = ["kvmspe"] + sorted(
    m.name for m in pkgutil.walk_packages(kvmspe.__path__, "kvmspe.") if m.name != "kvmspe.__main__"
)

#: Run in a fresh interpreter: spy on the environment and on the audit events of the
#: file system, rlimits and ioctls, import one module, print what was touched.
_PROBE = """
import os, sys
touched = []
class Spy(dict):
    def __getitem__(self, key):
        if key.startswith("KVMSPE"):
            touched.append("environ " + key)
        return dict.__getitem__(self, key)
    def get(self, key, default=None):
        if key.startswith("KVMSPE"):
            touched.append("environ " + key)
        return dict.get(self, key, default)
os.environ = Spy(os.environ)
def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], str) \
            and args[0].startswith(("/proc", "/sys", "/dev")):
        touched.append(event + " " + args[0])
    elif event in ("fcntl.ioctl", "resource.setrlimit", "resource.prlimit"):
        touched.append(event)
sys.addaudithook(hook)
import importlib
importlib.import_module(sys.argv[1])
print(touched)
"""


@pytest.mark.parametrize("module", MODULES)
def test_import_has_no_side_effect(module: str) -> None:
    names = ("KVMSPE_SPE_FEATURE_BIT", "KVMSPE_CAP_ARM_SPE", "KVMSPE_EXIT_RLIMIT")
    poisoned = {name: "banana" for name in names}
    env = {**os.environ, **poisoned, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, module], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_every_layer_is_listed() -> None:
    layers = {"kvmspe.arch.maxbuf", "kvmspe.host.discovery", "kvmspe.model.kernel"}
    layers.add("kvmspe.conformance.runner")
    assert layers <= set(MODULES)


def test_the_public_names_are_reached_from_the_root_and_imported_only_when_used() -> None:
    probe = (
        "import sys, kvmspe\n"
        "heavy = ('kvmspe.model.kernel', 'kvmspe.kvm', 'kvmspe.vmm', 'kvmspe.arch.maxbuf',"
        " 'kvmspe.planner')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "from kvmspe.model.kernel import Host\n"
        "from kvmspe.kvm import Kvm\n"
        "from kvmspe.vmm import bring_up\n"
        "assert kvmspe.Host is Host and kvmspe.Kvm is Kvm and kvmspe.bring_up is bring_up\n"
        "assert kvmspe.maxbuf.encode(4 << 20) == 0x400\n"
        "assert set(kvmspe.__all__) <= set(dir(kvmspe))\n"
        "assert all(not n.startswith('_') or n == '__version__' for n in kvmspe.__all__)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "ok"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kvmspe.nope  # noqa: B018


@pytest.mark.parametrize("module", MODULES)
def test_each_module_exports_only_its_public_names_that_exist(module: str) -> None:
    """``__all__`` is what ``from M import *`` and the docs take as M's API: every name in
    it is bound in M, listed once, and public (the package's ``__version__`` aside)."""
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    if names is None:
        assert mod.__file__ is not None and mod.__file__.endswith("__init__.py"), f"{module} has no __all__"
        kinds = (types.ModuleType,)
        own = [n for n, v in vars(mod).items() if not n.startswith("_") and not isinstance(v, kinds)]
        assert [n for n in own if n != "annotations"] == [], module
        return
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert [n for n in names if n.startswith("_") and n != "__version__"] == []
    assert [n for n in names if not hasattr(mod, n)] == []


def test_abi_re_exports_each_submodule_api_once() -> None:
    from kvmspe import abi

    parts = [abi.assumed, abi.constants, abi.errnos, abi.exits, abi.ioctl, abi.structs]
    assert abi.__all__ == [n for p in parts for n in p.__all__]
    assert all(getattr(abi, n) is getattr(p, n) for p in parts for n in p.__all__)


def test_the_version_is_the_one_pyproject_gives() -> None:
    import tomllib

    from kvmspe.version import __version__

    project = tomllib.loads((SRC.parent / "pyproject.toml").read_text())["project"]
    assert __version__ == project["version"] == kvmspe.__version__
