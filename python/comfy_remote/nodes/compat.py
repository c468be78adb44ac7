"""What this ComfyUI's V3 API supports, detected once, so every node loads
and runs on older ComfyUI too (0.3.64 has no Autogrow, no
``accept_all_inputs``, no ``advanced`` input option, and no
``ComfyAPI().execution`` attribute).

Nodes build their schema through :func:`schema` and :func:`make`, which pass
on only the keyword arguments this ComfyUI knows; behaviour that needs a
feature checks its flag (``ACCEPTS_ALL_INPUTS``, ``HAS_AUTOGROW``).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, TypeVar

from comfy_api.latest import io

T = TypeVar("T")

# io.Autogrow with TemplatePrefix (0.3.76+): a growing list of inputs.
HAS_AUTOGROW = hasattr(io, "Autogrow") and hasattr(getattr(io, "Autogrow"), "TemplatePrefix")


def _schema_fields() -> set[str]:
    try:
        return {f.name for f in dataclasses.fields(io.Schema)}
    except TypeError:  # not a dataclass: ask its constructor
        return set(inspect.signature(io.Schema).parameters)


SCHEMA_FIELDS = _schema_fields()
# Schema(accept_all_inputs=True): inputs the schema does not declare reach
# execute() as keyword arguments (what ComfyUI's own frontend-defined
# widgets use). The Remote API node's named inputs and outputs need it.
ACCEPTS_ALL_INPUTS = "accept_all_inputs" in SCHEMA_FIELDS


def _accepted(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params}
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def make(factory: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``factory(*args, **kwargs)`` without the keyword arguments this
    ComfyUI's ``factory`` does not take (e.g. ``advanced`` on 0.3.64)."""
    names, any_kw = _accepted(factory)
    if not any_kw:
        kwargs = {k: v for k, v in kwargs.items() if k in names}
    return factory(*args, **kwargs)


def execution_api() -> Any:
    """``ComfyAPI().execution`` (``set_progress``): 0.3.64 declares it on the
    class but never sets it on an instance, so take the singleton there."""
    from comfy_api.latest import ComfyAPI

    api = ComfyAPI()
    return getattr(api, "execution", None) or ComfyAPI.Execution()


def schema(**kwargs: Any) -> io.Schema:
    """An ``io.Schema`` with the fields this ComfyUI has."""
    return io.Schema(**{k: v for k, v in kwargs.items() if k in SCHEMA_FIELDS})
