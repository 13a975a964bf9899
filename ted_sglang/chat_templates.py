"""SGLang's frontend chat templates (``sglang/lang/chat_template.py``), read without
importing the ``sglang`` package: its ``__init__`` imports torch and transformers
(about 750 MiB and seconds), while the templates need only the standard library.
A process that has imported SGLang's frontend gets that very module, registry and all.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SGLANG_MODULE = "sglang.lang.chat_template"


def chat_templates() -> ModuleType:
    """SGLang's chat template module (``get_chat_template``, ``chat_template_registry``,
    ``get_chat_template_by_model_path``)."""
    return sys.modules.get(SGLANG_MODULE) or _standalone()


@functools.cache
def _standalone() -> ModuleType:
    package = importlib.util.find_spec("sglang")  # finds it, imports nothing
    if package is None or not package.submodule_search_locations:
        raise ModuleNotFoundError("SGLang is not installed", name="sglang")
    path = Path(next(iter(package.submodule_search_locations))) / "lang" / "chat_template.py"
    name = "ted_sglang._sglang_chat_template"  # not SGLang's name: sglang stays unimported
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
