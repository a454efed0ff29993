"""effarch's passes, one module per pass, and the -O pipelines (``passes.pipelines``).

Importing this package imports every pass module in it (each registers its passes with
``@register_pass``; adding a pass means adding a module), then the passes of installed plugins, then
the pipeline tables, which check at import time that every pass they name is registered.
"""

import importlib
import pkgutil

from compiler.pass_manager.plugins import load_plugins

TABLES = "pipelines"

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != TABLES:
        importlib.import_module(f"{__name__}.{_info.name}")
load_plugins()
importlib.import_module(f"{__name__}.{TABLES}")
