"""``python -m asyncbatch``: the same as the ``asyncbatch`` command."""

from __future__ import annotations

from ._cli._main import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
