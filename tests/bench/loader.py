"""Load a script of bench/ as a module (bench/ is not a package: its scripts run standalone)."""

import importlib.util
import pathlib
import sys
from types import ModuleType

BENCH = pathlib.Path(__file__).parents[2] / "bench"


def load_bench(name: str) -> ModuleType:
    """Import bench/<name>.py under the module name `name`."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
