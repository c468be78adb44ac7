"""ComfyUI entry point when this repository is installed as a node pack
(``ComfyUI/custom_nodes/comfy-remote``: git clone, ComfyUI-Manager, ``comfy
node install``).

The nodes live in the ``comfy-remote`` package, which ComfyUI-Manager and
``comfy node install`` install from ``requirements.txt`` as a prebuilt wheel
(no Rust needed). When that package is missing, of another version, or its
native module does not load, ComfyUI still starts: the pack logs one line
saying what to install, and ComfyUI lists it as IMPORT FAILED.
"""

import importlib.util
import sys

# The comfy-remote this node pack needs: the workspace version (Cargo.toml),
# pinned in requirements.txt too; a test keeps the three equal.
__version__ = "0.1.0"


def _install_hint() -> str:
    return f'"{sys.executable}" -m pip install comfy-remote=={__version__}'


def problem() -> "str | None":
    """Why the nodes cannot load here, in one line; None when they can."""
    if importlib.util.find_spec("comfy_remote") is None:
        return (
            f"comfy-remote: the comfy-remote package is not installed in this ComfyUI's Python; install it "
            f"with {_install_hint()} (ComfyUI-Manager's Try Fix does the same), then restart ComfyUI"
        )
    try:
        from comfy_remote._native import __version__ as installed
    except ImportError as exc:
        return (
            f"comfy-remote: the installed comfy-remote package has no working native module ({exc}); "
            f"reinstall it with {_install_hint()} --force-reinstall, then restart ComfyUI"
        )
    if installed != __version__:
        return (
            f"comfy-remote: this node pack is version {__version__} but ComfyUI's Python has comfy-remote "
            f"{installed}; install the matching one with {_install_hint()}, then restart ComfyUI"
        )
    return None


if importlib.util.find_spec("comfy_api") is None:
    # Imported outside ComfyUI (e.g. as the package of the repository root
    # by pytest): there is nothing to register.
    __all__: list = []
else:
    _problem = problem()
    if _problem is None:
        from comfy_remote.nodes import WEB_DIRECTORY, comfy_entrypoint

        __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
    else:

        async def comfy_entrypoint():
            # ComfyUI logs an entry point's error as one line and marks the
            # pack IMPORT FAILED; an exception at import would add a traceback.
            raise RuntimeError(_problem)

        __all__ = ["comfy_entrypoint"]

