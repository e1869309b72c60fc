"""Assembling the service: the store, the machine, the controller, the app; `serve` runs it.

    serve(Settings(data=Path("dojo-data"), system="v1", port=8600))

The embedded default is SQLite in the data folder (`DATA/dojo.db`); `db` takes a PostgreSQL URL.
SIGTERM (and Ctrl-C) shut down cleanly: uvicorn stops accepting requests, then the controller asks
every worker to checkpoint and stop, and requeues their jobs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dojo.service.controller import Controller, Limits
from dojo.service.ops import Service
from dojo.service.store import Store


@dataclass(frozen=True)
class Settings:
    data: Path = Path("dojo-data")
    db: str | None = None
    system: str = "v1"
    host: str = "127.0.0.1"
    port: int = 8600
    allow_factories: bool = False
    limits: Limits = field(default_factory=Limits)
    tick_s: float = 0.25
    hold: bool = False          # queue jobs, start none
    local_workers: bool = True  # run jobs here too (else only on `dojo worker` hosts)
    rate_per_s: float = 50.0    # requests per second per tenant (bursts of 4x)


def open_store(data: Path, db: str | None) -> Store:
    """The store at `db`, or SQLite in `data`; migrated to the newest schema. A data folder that
    cannot be made or a database that cannot be opened is a one-line ConfigError, and a data
    folder made here is removed again."""
    from dojo.service.storecheck import opened

    with opened(data, db):
        data.mkdir(parents=True, exist_ok=True)
        store = Store(db or f"sqlite:///{data.resolve() / 'dojo.db'}")
        store.migrate()
    return store


def build(settings: Settings) -> Service:
    from dojo.hardware import load_system
    from dojo.service.mesh import machine_of

    spec = load_system(settings.system)
    machine = machine_of(spec)
    store = open_store(settings.data, settings.db)
    controller = Controller(store, machine, settings.system, settings.data.resolve(),
                            settings.limits, settings.tick_s, hold=settings.hold,
                            local_workers=settings.local_workers)
    return Service(store, machine, settings.system, settings.data.resolve(), controller,
                   settings.allow_factories)


def serve(settings: Settings) -> None:
    import uvicorn

    from dojo.service.app import RateLimit, create_app

    svc = build(settings)  # before logging starts: a refusal stays one line, without INFO noise
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_app(svc, RateLimit(settings.rate_per_s, 4 * settings.rate_per_s))

    @asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        svc.controller.start()
        try:
            yield
        finally:
            svc.controller.stop()
            svc.store.close()

    app.router.lifespan_context = lifespan
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=5)
