"""effarch's passes, one module per pass. Importing this package imports every module in it, and each
pass module registers its passes with ``@register_pass``; adding a pass means adding a module."""

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_info.name}")
