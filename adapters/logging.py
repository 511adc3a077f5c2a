"""Structured logging for every tradecore process (API, relay, workers, CLI)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog
from structlog.typing import Processor

# The handler this module installed on the root logger, and the arguments it was built
# from: a second call with the same arguments is a no-op, a call with other arguments
# replaces the handler instead of stacking a second one.
_installed: tuple[logging.Handler, str, bool] | None = None


def _orjson_dumps(obj: Any, **_: Any) -> str:
    # default=str renders Decimal as "64250.5" (money is serialised as a string everywhere).
    return orjson.dumps(obj, default=str).decode()


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    """Route structlog and stdlib logging to stderr, as JSON lines or for a console."""
    global _installed
    level_name = level.upper()
    numeric_level = logging.getLevelName(level_name)
    if not isinstance(numeric_level, int):
        raise ValueError(f"unknown log level: {level!r}")
    if _installed is not None and _installed[1:] == (level_name, json):
        return

    shared = _shared_processors()
    renderer: Processor
    if json:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        # No local variables in tracebacks: they can hold credentials and exchange keys.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        final: list[Processor] = [tracebacks, renderer]
    else:
        colors = sys.stderr.isatty()
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors,
            exception_formatter=structlog.dev.RichTracebackFormatter(
                color_system="truecolor" if colors else None, show_locals=False
            ),
        )
        final = [renderer]

    # Records from stdlib loggers (uvicorn, aiokafka, faust, psycopg) get the same
    # timestamp/level/context fields and the same renderer as structlog's own.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed[0])
    root.addHandler(handler)
    root.setLevel(numeric_level)

    # The structlog chain does not depend on the arguments (rendering happens in the
    # handler's formatter), so loggers cached on first use stay correct after a reconfigure.
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    _installed = (handler, level_name, json)
