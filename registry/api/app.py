"""The FastAPI application: routers, and the one place errors become HTTP responses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.api import credit_routes, ledger_routes
from registry.api.paths import INSTRUCTION_PATHS
from registry.errors import RegistryError
from registry.service.context import Registry
from registry.service.submit import stored_answer
from registry.service.writer_process import WriterProcess

log = logging.getLogger(__name__)


def _error(status: int, code: str, message: str, details: object = None) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "details": details or {}}},
    )


MAX_BODY_BYTES = 16 << 20
"""The largest request body read. The largest instruction is a forest unit's boundary of at most
2,000,000 characters of GeoJSON: about 2 MB as GeoJSON is written (digits and punctuation), 12 MB
even if every character came escaped. Without a limit a client could make a server hold any
amount in memory; a larger body is answered 413 before it is read whole."""


class _BodyLimit:
    """ASGI middleware: a body declared or found larger than ``limit`` gets a 413."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _error(413, *self._too_large())(scope, receive, send)
                return
        read = 0

        async def receive_within_limit() -> Message:
            # A body sent in chunks, with no length declared: counted as it comes.
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > limit:
                raise StarletteHTTPException(413, self._too_large()[1])
            return message

        await self.app(scope, receive_within_limit, send)

    def _too_large(self) -> tuple[str, str]:
        return "payload_too_large", f"the request body is larger than {self.limit} bytes"


class _AnswerFailures:
    """ASGI middleware: a failure nothing else answered is answered 500 ``internal_error`` and
    logged with its traceback, here. Starlette's own handler for ``Exception`` answers and then
    raises the error again, and uvicorn then closes the connection: a client's next request
    on it, already on its way, met a reset instead of an answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except Exception as exc:
            if started:  # half an answer is out: only closing the connection can end it
                raise
            log.exception("unexpected error", exc_info=exc)
            await _error(
                500, "internal_error",
                "the registry failed; a retry with the same Idempotency-Key is safe",
            )(scope, receive, send)


_KINDS_BY_PATH = {path: kind for kind, path in INSTRUCTION_PATHS.items()}


async def _answer_to_a_retry(request: Request, body: object) -> JSONResponse | None:
    """The stored answer to a retry that the body check refuses but the registry once accepted.

    A request accepted under an earlier version of the API (an instruction naming no registry,
    from before instructions named one) and retried after an upgrade must get its answer, as
    every retry does: a client told 422 would sign the move afresh and make it twice.
    """
    route = request.scope.get("route")
    kind = _KINDS_BY_PATH.get(getattr(route, "path", "")) if request.method == "POST" else None
    key = request.headers.get("Idempotency-Key")
    if kind is None or key is None:
        return None
    outcome = await run_in_threadpool(stored_answer, request.app.state.registry, kind, body, key)
    if outcome is None:
        return None
    return JSONResponse(outcome.body, status_code=outcome.status_code,
                        headers={"Idempotent-Replayed": "true"})


def _allowed(request: Request) -> str:
    """Every method of every route on the path of ``request`` (a 405's ``Allow``)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route_methods
    return ", ".join(sorted(methods))


def create_app(registry: Registry, *, writer: WriterProcess | None = None) -> FastAPI:
    """The API of ``registry``. With ``writer``, instructions are carried out in that writer
    process (``registry serve``); without, by the registry's writer thread (tests, embedding).
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if writer is not None:
            # Let the writer process finish what it holds before this process goes.
            await writer.aclose()

    app = FastAPI(
        lifespan=lifespan,
        title="Cambodia carbon credit registry",
        version="1",
        description=(
            "JCM projects and REDD+ forest units, their credits, and the signed ledger that "
            "records every change. Ledger entries, checkpoints and proofs are public."
        ),
    )
    app.state.registry = registry
    app.state.writer = writer
    app.add_middleware(_BodyLimit)
    app.add_middleware(_AnswerFailures)
    # The routers' routes go on the app's own router, instructions first. An included router
    # is matched through a layer of FastAPI's per request and route (a 404 walked the then 42 routes
    # in 138 us, against 96 us flat), and a transfer is the route the registry serves most.
    # (So app.dependency_overrides does not reach these routes; nothing here uses it.)
    for router in (credit_routes.router, credit_routes.reads, ledger_routes.router):
        app.router.routes.extend(router.routes)

    @app.exception_handler(RegistryError)
    async def _registry_error(_request: Request, exc: RegistryError) -> JSONResponse:
        if exc.http_status >= 500:
            # A 503 (a busy ledger, a database that cannot write) is a state of the machine,
            # said in full by its message; a 500 is a fault, whose traceback is wanted.
            log.error("registry error: %s", exc.message,
                      exc_info=exc if exc.http_status == 500 else None)
        return _error(exc.http_status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        retried = await _answer_to_a_retry(request, exc.body)
        if retried is not None:
            return retried
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return _error(422, "invalid_request", f"{where}: {first['msg']}", {"errors": errors})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        response = _error(exc.status_code, code, str(exc.detail))
        # A 405 says which methods the path does take (``Allow``, RFC 9110 §15.5.6).
        response.headers.update(exc.headers or {})
        if exc.status_code == 405 and "allow" in response.headers:
            # Starlette names those of the first route on the path only; a list and its
            # instruction (GET and POST /v1/parties) are two routes.
            response.headers["allow"] = _allowed(request)
        return response

    return app
