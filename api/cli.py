"""The ``tradecore`` command line: run the system, administer projections, audit streams."""

from __future__ import annotations

import typer

app = typer.Typer(help="tradecore: event-sourced trading core", no_args_is_help=True, add_completion=False)


@app.command()
def serve(
    host: str | None = typer.Option(None, help="bind address (default TRADECORE_HOST or 127.0.0.1)"),
    port: int | None = typer.Option(None, help="port (default TRADECORE_PORT or 8000)"),
) -> None:
    """Run the embedded system: event store, projection runner, paper venue and the HTTP API."""
    import uvicorn

    from adapters.logging import configure_logging
    from adapters.settings import Settings
    from api.app import create_app

    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        access_log=False,
    )


def _register_subcommands() -> None:
    from api import cli_admin, cli_bots, cli_kafka

    for module in (cli_admin, cli_bots, cli_kafka):
        module.register(app)


def main() -> None:
    _register_subcommands()
    app()
