"""Token references: widgets name a secret, never hold it.

A reference is one of
- ``NAME`` or ``env:NAME``: the environment variable ``NAME``;
- ``secrets:KEY``: key ``KEY`` of the JSON object in the secrets file,
  ``<ComfyUI user dir>/comfy-remote/secrets.json`` (or the file named by
  ``COMFY_REMOTE_SECRETS_FILE``).
Widget values are saved into workflow files and PNG metadata, so a value
that looks like a token rather than a name is refused.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from comfy_remote._native import ENV

SECRETS_FILE_ENV = ENV["SECRETS_FILE"]
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class SecretError(ValueError):
    """A reference that cannot be resolved; the message says how to fix it."""


def secrets_file() -> Path:
    """Where ``secrets:`` references are read from."""
    override = os.environ.get(SECRETS_FILE_ENV)
    if override:
        return Path(override)
    try:
        import folder_paths  # ComfyUI's; absent outside ComfyUI

        user_dir = Path(folder_paths.get_user_directory())
    except Exception:
        user_dir = Path.home() / ".config"
    return user_dir / "comfy-remote" / "secrets.json"


def resolve(reference: str, *, field: str) -> str | None:
    """The secret a reference names, ``None`` for an empty reference."""
    ref = (reference or "").strip()
    if not ref:
        return None
    if ref.startswith("secrets:"):
        key = ref[len("secrets:") :].strip()
        path = secrets_file()
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SecretError(
                f"{field}: {ref!r} needs the secrets file {path}, which does not exist; "
                f'create it as {{"{key}": "<value>"}}'
            ) from None
        except (OSError, ValueError) as e:
            raise SecretError(f"{field}: cannot read secrets file {path}: {e}") from None
        value = table.get(key) if isinstance(table, dict) else None
        if not isinstance(value, str) or not value:
            raise SecretError(f"{field}: secrets file {path} has no string entry {key!r}")
        return value
    name = ref[len("env:") :] if ref.startswith("env:") else ref
    if not _ENV_NAME.match(name):
        raise SecretError(
            f"{field}: {name[:4]}… is not an environment variable name. Put the secret in an "
            "environment variable or the secrets file and give its name here "
            "(widget values are saved in workflows and images)"
        )
    value = os.environ.get(name)
    if not value:
        raise SecretError(f"{field}: environment variable {name} is not set")
    return value


def auth_headers(token_ref: str, modal_key_ref: str, modal_secret_ref: str) -> list[tuple[str, str]]:
    """HTTP headers for the references given: a bearer token and Modal's proxy-auth pair."""
    headers: list[tuple[str, str]] = []
    token = resolve(token_ref, field="token")
    if token:
        headers.append(("Authorization", f"Bearer {token}"))
    key = resolve(modal_key_ref, field="modal_key")
    secret = resolve(modal_secret_ref, field="modal_secret")
    if bool(key) != bool(secret):
        raise SecretError("modal_key and modal_secret go together: give both references or neither")
    if key and secret:
        headers += [("Modal-Key", key), ("Modal-Secret", secret)]
    return headers
