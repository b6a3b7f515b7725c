"""FastAPI dependencies, declared once as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from registry.service.context import Registry
from registry.store.db import read_session


async def get_registry(request: Request) -> Registry:
    # async: FastAPI would run a plain function in a worker thread, once per request.
    registry: Registry = request.app.state.registry
    return registry


RegistryDep = Annotated[Registry, Depends(get_registry)]


def get_read_session(registry: RegistryDep) -> Iterator[Session]:
    with read_session(registry.engine) as session:
        yield session


ReadSessionDep = Annotated[Session, Depends(get_read_session)]
