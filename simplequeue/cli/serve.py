"""`simplequeue serve`: the HTTP API, its live events and the dashboard (the `web` extra)."""

from __future__ import annotations

import click

from simplequeue.cli.common import apply_log_options, connection_options, log_options, reachable

__all__ = ["register"]


def register(cli: click.Group) -> None:
    cli.add_command(serve)


@click.command(help="Serve the HTTP API, live events and the dashboard (needs simplequeue[web]).")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--admin-token",
    "admin_tokens",
    multiple=True,
    envvar="SIMPLEQUEUE_ADMIN_TOKEN",
    help="a token that may read and change (repeat for several; at least 16 characters)  "
    "[default: $SIMPLEQUEUE_ADMIN_TOKEN, else a new one, printed at start]",
)
@click.option(
    "--read-token",
    "read_tokens",
    multiple=True,
    envvar="SIMPLEQUEUE_READ_TOKEN",
    help="a token that may only read (repeat for several)  [default: $SIMPLEQUEUE_READ_TOKEN]",
)
@click.option("--public-read", is_flag=True, help="reads need no token (on a trusted network only)")
@click.option(
    "--listen-dsn",
    envvar="SIMPLEQUEUE_LISTEN_DSN",
    default=None,
    help="connection string of the live events' LISTEN alone, straight to the server when "
    "--dsn goes through PgBouncer  [default: $SIMPLEQUEUE_LISTEN_DSN, else --dsn]",
)
@connection_options
@log_options
def serve(
    host: str,
    port: int,
    admin_tokens: tuple[str, ...],
    read_tokens: tuple[str, ...],
    public_read: bool,
    listen_dsn: str | None,
    dsn: str,
    schema: str,
    log_level: str | None,
    log_format: str | None,
) -> None:
    apply_log_options(log_level, log_format)
    try:
        import uvicorn

        from simplequeue.web import create_app, new_token
    except ImportError as exc:
        raise click.ClickException(
            f'serve needs the web extra: pip install "simplequeue[web]" ({exc})'
        ) from None
    from simplequeue.queue import SimpleQueue

    reachable(dsn)
    tokens = admin_tokens
    if not tokens:
        tokens = (new_token(),)
        click.echo(f"admin token (new, for this run): {tokens[0]}", err=True)
    queue = SimpleQueue.from_url(
        dsn, schema=schema, pool_min_size=1, pool_max_size=5, listen_dsn=listen_dsn
    )
    try:
        app = create_app(
            queue,
            admin_tokens=tokens,
            read_tokens=read_tokens,
            public_read=public_read,
            open_queue=True,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--admin-token/--read-token") from None
    click.echo(f"serving {schema} on http://{host}:{port}/", err=True)
    # Event streams never end by themselves: a stop gives them 3 s, then closes them.
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
    )
