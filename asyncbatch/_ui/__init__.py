"""The web dashboard behind ``asyncbatch ui``: runs, one run live, the dead-letter queue.

An aiohttp.web application (`make_app`) serving a JSON API (`_api`) and
plain HTML/JS/CSS from ``static/`` (shipped in the wheel; no build step).
The page polls the API; every read is a plain read of the store, so a
running batch's writer is never blocked. Actions that change data
(redrive, purge) need the token `serve` prints at start, and are refused
altogether with ``read_only``.

May import the layers below the command line (store, observe, run); the
CLI (`asyncbatch._cli._ui`) imports this package only when ``ui`` runs, so
``import asyncbatch`` and the other commands never load aiohttp.web.
"""

from __future__ import annotations

from ._app import TOKEN_HEADER, make_app, serve

__all__ = ["TOKEN_HEADER", "make_app", "serve"]
