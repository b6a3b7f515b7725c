"""FastAPI dependencies, declared once as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from sqlmodel import Session

from registry.errors import InvalidRequestError
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


# Closed as the route returns, its answer built, not once the answer is sent (a yield
# dependency's default): a client that has its answer and reads again finds the connection back
# in the pool, where it would otherwise need, and open, a second. A server whose SQLite file
# was moved away opens none (store.db), and answers reads only from connections it holds.
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]


def _query_names(dependant: Dependant) -> frozenset[str]:
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return frozenset(names)


_KNOWN_QUERY: dict[int, frozenset[str]] = {}


async def refuse_unknown_query(request: Request) -> None:
    """A read with a query parameter its route does not take is refused: a misspelt or
    unsupported filter (``/v1/batches?project_id=...``) would otherwise be ignored, and the
    answer would list everything as if it were the filtered list."""
    route: Any = request.scope["route"]
    known = _KNOWN_QUERY.get(id(route))
    if known is None:
        known = _KNOWN_QUERY[id(route)] = _query_names(route.dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise InvalidRequestError(
            f"unknown query parameter {unknown[0]!r} (this read takes: {takes})",
            details={"unknown": unknown, "known": sorted(known)},
        )


#: Every read route depends on this: only the query parameters it declares are accepted.
KnownQuery = [Depends(refuse_unknown_query)]
