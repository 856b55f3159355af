"""The library (src/lorasc) stands apart from the application (src/lorasc/run): it imports none of it."""

import pkgutil
import subprocess
import sys

import lorasc

LIBRARY = sorted(module.name for module in pkgutil.iter_modules(lorasc.__path__) if not module.ispkg)


def test_every_library_module_imports_without_the_application():
    assert {"cascade", "config", "export", "methods", "slow"} <= set(LIBRARY)
    code = (f"import importlib, sys\nfor name in {LIBRARY!r}: importlib.import_module('lorasc.' + name)\n"
            "print(sorted(m for m in sys.modules if m == 'lorasc.run' or m.startswith('lorasc.run.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"the library loaded application modules: {loaded}"
