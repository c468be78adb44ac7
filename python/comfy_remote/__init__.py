"""comfy-remote: run parts of a ComfyUI workflow on a remote GPU.

The heavy lifting lives in the native module (``comfy_remote._native``, Rust).
This package holds the ComfyUI nodes (``comfy_remote.nodes``, imported only by
ComfyUI) and the Python-side value conversion (``comfy_remote.codec``).
"""

from __future__ import annotations

from comfy_remote._native import __version__

__all__ = ["__version__"]
