"""``asyncbatch ui``: serve the web dashboard over a store until Ctrl-C."""

from __future__ import annotations

import errno
import secrets

import click

from ._input import CLIError, db_option, existing_db, load_job, open_db, run_async

__all__ = ["ui"]


@click.command()
@db_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. Anything but loopback exposes the dashboard to the network.",
)
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to bind (0: any free port).",
)
@click.option("--read-only", is_flag=True, help="Refuse every action that changes data.")
def ui(db: str, host: str, port: int, read_only: bool) -> None:
    """Serve the dashboard: runs, one run live, the dead-letter queue.

    Redrive and purge need the token printed at start (the printed URL
    carries it); --read-only refuses them altogether. Redrive imports each
    run's job (module:function, the current directory first on sys.path).
    """
    existing_db(db)
    if db.startswith("memory:"):
        raise CLIError("memory:// holds nothing another process can show: pass --db PATH|URL")
    from asyncbatch._ui import make_app, serve  # aiohttp.web only for this command

    token = secrets.token_urlsafe(24)
    if not _loopback(host):
        click.echo(
            f"warning: --host {host} lets other machines read every run and dead letter "
            "(payloads, tracebacks); the token guards only redrive and purge",
            err=True,
        )

    def started(base: str) -> None:
        mode = "read-only" if read_only else "actions need the token"
        click.echo(f"asyncbatch ui on {base} ({mode}; Ctrl-C stops)")
        if read_only:
            click.echo(f"open {base}")
        else:
            click.echo(f"open {base}#token={token}")
            click.echo(f"token: {token}")

    async def go() -> None:
        async with open_db(db) as store:
            app = make_app(
                store,
                token=token,
                read_only=read_only,
                load_job=load_job,
                loopback_only=_loopback(host),
            )
            try:
                await serve(app, host=host, port=port, on_started=started)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise CLIError(
                        f"port {port} on {host} is in use (another asyncbatch ui?): "
                        "pass --port N, or --port 0 for any free port"
                    ) from None
                raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    try:
        run_async(go())
    except KeyboardInterrupt:
        click.echo("stopped")


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
