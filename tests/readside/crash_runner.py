"""A projection runner (or a rebuild) in its own process, for the SIGKILL tests.

    python crash_runner.py run     --events URL --read URL [--batch N] [--pause-at-commit N]
    python crash_runner.py rebuild --events URL --read URL

``run`` tails the log with ``ProjectionRunner.run`` forever, printing ``COMMITTED <n>``
after commits; with ``--pause-at-commit N`` it stops inside its N-th commit, after the
rows were written and before the checkpoint, prints ``MID-COMMIT`` and waits to be
killed. ``rebuild`` rebuilds every projection and stops at its first flush, printing
``MID-REBUILD`` after that flush was written. URLs are those of ``open_event_store`` and
``open_read_store``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE)]

from helpers import LedgerProjection, all_projections  # noqa: E402

from adapters.eventstore import open_event_store  # noqa: E402
from adapters.time import SystemClock  # noqa: E402
from streams.rebuild import RebuildProgress, rebuild  # noqa: E402
from streams.runner import ProjectionRunner  # noqa: E402


def open_read(url: str, fault: object) -> object:
    scheme = url.partition("://")[0]
    if scheme == "sqlite":
        from adapters.readstore.sqlite import SqliteReadStore

        return SqliteReadStore(url.partition(":///")[2], fault=fault)  # type: ignore[arg-type]
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    from adapters.readstore.postgres import PostgresReadStore

    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    schema = dict(query)["schema"]
    dsn = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "schema"])))
    return PostgresReadStore(dsn, schema=schema, fault=fault)  # type: ignore[arg-type]


def hang(marker: str) -> None:
    print(marker, flush=True)
    while True:
        time.sleep(60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["run", "rebuild"])
    parser.add_argument("--events", required=True)
    parser.add_argument("--read", required=True)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--pause-at-commit", type=int, default=0)
    args = parser.parse_args()

    commits = {"n": 0}

    def fault(stage: str) -> None:
        if stage == "rows":
            commits["n"] += 1
            if commits["n"] == args.pause_at_commit:
                hang("MID-COMMIT")
        elif stage == "commit" and commits["n"] % 20 == 0:
            print(f"COMMITTED {commits['n']}", flush=True)

    store = open_event_store(args.events, SystemClock())
    read_store = open_read(args.read, fault)
    projections = [*all_projections(), LedgerProjection]
    if args.mode == "run":
        print("STARTED", flush=True)
        ProjectionRunner(store, read_store, projections, batch_size=args.batch,  # type: ignore[arg-type]
                         max_cached_rows=200).run(threading.Event())
    else:

        def progress(p: RebuildProgress) -> None:
            if p.phase == "replay" and p.events >= 600:
                hang("MID-REBUILD")  # the first flush (every 300 events) is written by now

        rebuild(store, read_store, projections, flush_every=300, batch_size=100, progress=progress)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
