"""``python tests/kafka/kafka_cli.py relay|worker``: the CLI commands, without an installed script."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import typer  # noqa: E402

from api.cli_kafka import register  # noqa: E402

app = typer.Typer(add_completion=False)
register(app)

if __name__ == "__main__":
    app()
