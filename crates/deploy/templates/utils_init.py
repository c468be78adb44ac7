"""`utils` shim: makes `import utils.<module>` resolve to ComfyUI's own utils package.

A PyPI package named `utils`, or a `utils` module imported before ComfyUI's
directory is on sys.path, made `import utils.install_util` fail with
"'utils' is not a package". This package sits next to workflow.py (first on
sys.path in the Modal container) and serves ComfyUI's utils/ directory.
"""

from __future__ import annotations

import os

_COMFY_UTILS = os.path.join(os.environ.get("COMFYUI_DIR", "/workspace/ComfyUI"), "utils")

# Submodules (utils.install_util, utils.json_util, ...) are looked up in
# ComfyUI's directory first, then here.
__path__ = [_COMFY_UTILS, *__path__]  # noqa: F821  (set by the import system)

_init = os.path.join(_COMFY_UTILS, "__init__.py")
if os.path.isfile(_init):
    with open(_init, encoding="utf-8") as _f:
        exec(compile(_f.read(), _init, "exec"))  # re-export ComfyUI's utils/__init__.py names
