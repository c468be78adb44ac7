"""``python -m comfy_remote`` and the ``comfy-remote`` console script: the Rust CLI."""

from __future__ import annotations

import sys


def main() -> None:
    from comfy_remote import _native

    sys.exit(_native.run_cli(sys.argv))


if __name__ == "__main__":
    main()
