"""ComfyUI entry point when this repository is cloned into ``ComfyUI/custom_nodes``.

The nodes live in the installed ``comfy_remote`` package (``pip install`` it
into ComfyUI's Python, see README); this file only hands ComfyUI the V3
extension entry point.
"""

import importlib.util

if importlib.util.find_spec("comfy_api") is None:
    # Imported outside ComfyUI (e.g. as the package of the repository root
    # by pytest): there is nothing to register.
    __all__: list[str] = []
else:
    try:
        from comfy_remote.nodes import comfy_entrypoint
    except ImportError as exc:  # pragma: no cover - shown in ComfyUI's log
        raise ImportError(
            "comfy-remote: the comfy_remote package is not installed in ComfyUI's Python. "
            "Run `python -m pip install /path/to/comfy-remote` with ComfyUI's interpreter."
        ) from exc

    __all__ = ["comfy_entrypoint"]
