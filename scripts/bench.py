"""Proof under load: how fast the registry appends, proves and verifies, each beside a floor.

Every figure is printed next to a floor measured in the same run on the same machine, so the
ratios travel between machines even when the raw numbers do not. The floor is measured beside
each figure, not once: each HTTP load alternates with the floor's in slices, and raw Ed25519
is timed just before and just after each verification, because a virtual machine's speed
drifts within minutes (by a quarter on the development machine) and a ratio of two figures
taken minutes apart measured that drift as much as the code:

- **transfers/s over HTTP**: signed, durable (acknowledged means committed) transfers against
  ``registry serve`` with one uvicorn worker (a subprocess on a free loopback port, configured
  by ``REGISTRY_*`` variables; the worker hands writes to the server's writer process), on
  SQLite and PostgreSQL, with 1 and 32 concurrent clients, p50 and p99 latency; on PostgreSQL
  also with ``--workers 2``. Floor: a bare FastAPI endpoint taking the same pydantic body (the
  registry's own signed-transfer model), served by uvicorn the same way (subprocess, as many
  workers as the registry it is held against, same HTTP protocol and log level) and driven by
  the same load generator.
- **the least durable write** at one client, on each engine: an endpoint served the same way
  that does a part of what any code must before it may acknowledge a transfer, and nothing
  else (parse the body as the registry does, verify the holder's signature, sign once, commit
  one row under the request's Idempotency-Key on a connection set up as the registry's),
  alternated with the floor. A lower bound: below the target, the target is out of this
  machine's reach at one client; above it, the margin is what the rest of a transfer (the
  signer's key, the nonce, the holdings, the chain, the tree, the checkpoint) may take.
- **issuance** of 1 tonne and of 10^9 tonnes (in-process, through ``submit``): a batch is one
  block per allocation, so the two must cost the same within noise.
- **inclusion and consistency proofs** at 10^4 and 10^6 leaves (10^5 with ``--quick``), from a
  ``tree_node`` table bulk-loaded with synthetic leaf hashes (nothing is signed), timed through
  ``registry.service.ledger`` on a read session. Floor: one primary-key read of ``tree_node`` on
  the same session.
- **verification**: raw Ed25519 verifications/s on one core and on all cores (the floor of any
  offline verifier), the in-process ledger audit (``audit_store``) on the HTTP run's ledger,
  and the offline bundle verifier (``registry.ledger.verify_bundle``, when present) on exports
  of 10^4 and 10^5 entries (``--verify-sizes``; 10^6 takes ~15 min on two cores), run as an
  auditor runs it (``registry verify --json``, whose report gives the time) while this process
  samples the peak memory (``VmHWM``) of the command and of its workers. The ledgers are
  genuine (every entry signed by its holder and by the registry, chained, in the tree,
  checkpointed) but appended in bulk.

The load generator is a minimal asyncio HTTP/1.1 client on keep-alive connections sending
pre-signed, pre-encoded requests: neither client-side signing nor a heavy client library
competes with the server for the machine's cores. ``--profile`` prints a cProfile of the
transfer path (``submit`` in-process) instead. The last line printed is one JSON object holding
every figure.
"""

import argparse
import asyncio
import contextlib
import cProfile
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import pstats
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx

from registry.client import new_nonce, sign_instruction
from registry.config import Settings
from registry.ledger import merkle
from registry.ledger.keys import SigningKey
from registry.service import ledger as ledger_service
from registry.service.context import Registry
from registry.service.setup import FirstAdministrator, initialise
from registry.service.submit import prepare, submit
from registry.store.db import make_engine, migrate, read_session, scratch_schema
from registry.store.tables import TreeNode

if TYPE_CHECKING:
    from fastapi import FastAPI

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
ORIGIN = "bench.carbon-registry.example/ledger"
ADMIN = "bench-admin"
HOLDER = "bench-holder"
BUYER = "bench-buyer"
TPE = "bench-tpe"
SOURCE = "BENCH-SRC"
DESTINATION = "BENCH-DST"
PROJECT = "KH901"
FIRST_DAY = date(2020, 1, 1)
VALID_FOR = timedelta(hours=6)
SERVER_START_TIMEOUT = 90.0
LOAD_TIMEOUT = 600.0

TARGETS = {
    "sqlite_ratio": 0.40,
    "postgresql_ratio": 0.30,
    "p99_ms_at_32": 25.0,
    "proof_ms_at_1e6": 2.0,
    "verify_signature_share": 0.85,
}


def say(line: str = "") -> None:
    print(line, flush=True)


# --- databases and registries ---------------------------------------------------------------------


@contextlib.contextmanager
def database(kind: str, workdir: Path, pg_base: str | None) -> Iterator[str]:
    """A fresh SQLite file or a fresh PostgreSQL schema (dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        return
    assert pg_base is not None
    with scratch_schema(pg_base, prefix="bench") as url:
        yield url


def sha_hex(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


@dataclass
class Seeded:
    """A registry with a holder, a buyer, a third-party entity and a JCM project, in-process."""

    registry: Registry
    settings: Settings
    keys: dict[str, SigningKey]
    day: int = 0

    def signed(self, actor: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return sign_instruction(self.keys[actor], registry=self.registry.origin, actor=actor,
                                type=kind, body=body, valid_for=VALID_FOR)

    def do(self, actor: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        outcome = submit(self.registry, self.signed(actor, kind, body), expected_type=kind,
                         idempotency_key=new_nonce())
        return outcome.body

    def verified_report(self, quantity: int) -> str:
        """A one-day monitoring report of ``quantity`` tonnes, submitted and verified."""
        day = (FIRST_DAY + timedelta(days=self.day)).isoformat()
        self.day += 1
        report_id = f"{PROJECT}-MR{self.day}"
        self.do(HOLDER, "report.submit", {
            "report_id": report_id, "project_id": PROJECT, "period_start": day,
            "period_end": day, "reductions": quantity, "document_sha256": sha_hex(report_id),
        })
        self.do(TPE, "report.verify", {
            "report_id": report_id, "verified_reductions": quantity,
            "statement_sha256": sha_hex(report_id + "/statement"),
        })
        return report_id

    def issue_body(self, report_id: str, quantity: int) -> dict[str, Any]:
        return {"report_id": report_id, "vintage": 2020,
                "allocations": [{"account": SOURCE, "quantity": quantity}]}

    def issue(self, quantity: int) -> str:
        result = self.do(ADMIN, "credits.issue", self.issue_body(self.verified_report(quantity),
                                                                 quantity))
        batch: str = result["result"]["batch"]
        return batch

    def transfer(self, batch: str, quantity: int = 1) -> dict[str, Any]:
        return self.signed(HOLDER, "credits.transfer", {
            "account": SOURCE, "batch": batch, "quantity": quantity, "to_account": DESTINATION})


def seed(url: str, workdir: Path) -> Seeded:
    key_file = workdir / f"registry-key-{uuid.uuid4().hex[:8]}.pem"
    settings = Settings(database_url=url, origin=ORIGIN, key_file=key_file)
    keys = {party: SigningKey.generate() for party in (ADMIN, HOLDER, BUYER, TPE)}
    registry = initialise(
        settings, admin=FirstAdministrator(party_id=ADMIN, public_key=keys[ADMIN].public_key),
        insecure_dev_key=True,
    )
    s = Seeded(registry=registry, settings=settings, keys=keys)
    for party, role, country in ((HOLDER, "participant", "KH"), (BUYER, "participant", "JP"),
                                 (TPE, "third_party_entity", "GB")):
        s.do(ADMIN, "party.register", {
            "party_id": party, "name": f"{party} (benchmark)", "role": role, "country": country,
            "public_keys": [keys[party].public_key.to_b64()],
        })
    for account, holder in ((SOURCE, HOLDER), (DESTINATION, BUYER)):
        s.do(ADMIN, "account.open", {"account_id": account, "holder": holder,
                                     "name": f"{holder} holding"})
    s.do(ADMIN, "project.register", {
        "project_id": PROJECT, "title": "Benchmark project", "partner_country": "KH",
        "methodology": "KH_AM001", "sector": "Energy efficiency",
        "programme": "JCM", "participants": [HOLDER],
        "third_party_entity": TPE, "crediting_period_start": FIRST_DAY.isoformat(),
        "crediting_period_end": "2040-12-31",
    })
    return s


# --- servers --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def server_process(cmd: Sequence[str], env: Mapping[str, str], port: int, ready_path: str,
                   log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` in its own session until ``GET ready_path`` answers 200; stop it after."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(cmd), env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT, start_new_session=True)
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}:\n{_tail(log_path)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start in time:\n{_tail(log_path)}")
                with contextlib.suppress(httpx.HTTPError):
                    url = f"http://127.0.0.1:{port}{ready_path}"
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                time.sleep(0.05)
            yield proc
        finally:
            stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's own process group (uvicorn and its workers), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


def server_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update({
        "REGISTRY_DATABASE_URL": settings.database_url,
        "REGISTRY_ORIGIN": settings.origin,
        "REGISTRY_KEY_FILE": str(settings.key_file),
    })
    return env


@dataclass(frozen=True)
class Served:
    """A server on a loopback port, and its process (the root of its process tree)."""

    port: int
    pid: int


@contextlib.contextmanager
def registry_server(settings: Settings, workdir: Path, *, workers: int = 1) -> Iterator[Served]:
    port = free_port()
    cmd = [str(VENV_BIN / "registry"), "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers)]
    log = workdir / f"registry-{port}.log"
    with server_process(cmd, server_env(settings), port, "/v1/checkpoint", log) as proc:
        yield Served(port, proc.pid)


@contextlib.contextmanager
def floor_server(workdir: Path, *, workers: int = 1,
                 env: Mapping[str, str] | None = None) -> Iterator[Served]:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-floor", str(port),
           "--floor-workers", str(workers)]
    log = workdir / f"floor-{port}.log"
    with server_process(cmd, {**os.environ, **(env or {})}, port, "/health", log) as proc:
        yield Served(port, proc.pid)


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User and system CPU the live processes ``pids`` have used so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def _postgres_pids() -> list[int]:
    """PostgreSQL's processes on this machine (its backends, writers and the rest)."""
    try:
        import pwd

        uid = pwd.getpwnam("postgres").pw_uid
    except (ImportError, KeyError):
        return []
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{name}").st_uid == uid:
                    found.append(int(name))
    return found


def floor_app() -> Any:
    """The floor: a bare FastAPI endpoint taking the registry's signed-transfer body."""
    from fastapi import Body, FastAPI, Header

    from registry.domain.instructions import signed_model

    model = signed_model("credits.transfer")
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/v1/transfers")
    async def transfers(
        body: Annotated[model, Body()],  # type: ignore[valid-type]
        idempotency_key: Annotated[str, Header(alias="Idempotency-Key")],
    ) -> dict[str, Any]:
        return {"seq": 1, "kind": "credits.transfer", "leaf_hash": idempotency_key,
                "tree_size": 2, "result": {}}

    if MINIMUM_URL in os.environ:
        _add_minimum(app, os.environ[MINIMUM_URL], os.environ[MINIMUM_KEY])
    return app


MINIMUM_URL = "BENCH_MINIMUM_URL"
MINIMUM_KEY = "BENCH_MINIMUM_PUBLIC_KEY"


def _add_minimum(app: "FastAPI", url: str, public_key: str) -> None:
    """``POST /v1/minimum``: a lower bound of what code taking a signed transfer and
    acknowledging it durably does. It parses the body as the registry does, verifies the
    holder's signature, signs once (the registry's entry), and commits one row keyed by the
    request's Idempotency-Key (unique, as a retry must find it) to the database at ``url``, on
    a connection set up as the registry's (WAL and ``synchronous=FULL`` on SQLite; the schema
    on PostgreSQL), in autocommit: one statement, one durable commit. No signer lookup, no
    nonce, no holdings, no chain, no tree, no checkpoint, no writer process: what a transfer
    must also do comes on top."""
    from fastapi import Header, Request

    from registry.ledger.keys import PublicKey
    from registry.service.instructions import parse_request

    holder = PublicKey.from_b64(public_key)
    signer = SigningKey.generate()
    pooled = make_engine(url).raw_connection()  # kept for the process's life
    connection: Any = pooled.driver_connection
    sqlite = url.startswith("sqlite")
    if not sqlite:
        connection.autocommit = True  # pysqlite's is already off (the registry's engine)
    connection.execute("CREATE TABLE IF NOT EXISTS bench_minimum (idempotency_key TEXT "
                       f"PRIMARY KEY, envelope {'BLOB' if sqlite else 'BYTEA'} NOT NULL)")
    mark = "?" if sqlite else "%s"
    insert = f"INSERT INTO bench_minimum (idempotency_key, envelope) VALUES ({mark}, {mark})"

    @app.post("/v1/minimum")
    async def minimum(
        request: Request, idempotency_key: Annotated[str, Header(alias="Idempotency-Key")]
    ) -> dict[str, Any]:
        parsed = parse_request(json.loads(await request.body()),
                               expected_type="credits.transfer", registry=ORIGIN)
        holder.verify(parsed.signature, parsed.message)
        connection.execute(insert, (idempotency_key, parsed.message + signer.sign(parsed.message)))
        return {"seq": 1, "kind": "credits.transfer", "leaf_hash": idempotency_key,
                "tree_size": 2, "result": {}}


def serve_floor(port: int, workers: int) -> None:
    """Serve :func:`floor_app` the way `registry serve` serves the registry: as many uvicorn
    workers, the same HTTP protocol (h11, Nagle off on each connection), access log at info
    level."""
    import uvicorn

    uvicorn.run("bench:floor_app", factory=True, app_dir=str(Path(__file__).parent),
                host="127.0.0.1", port=port, workers=workers,
                http="registry.api.server:NoDelayH11Protocol", log_level="info")


# --- the load generator ---------------------------------------------------------------------------


def http_request(port: int, path: str, body: bytes, idempotency_key: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nIdempotency-Key: {idempotency_key}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: list[float]
    statuses: Counter[int]
    bodies: list[bytes] = field(default_factory=list)
    server_cpu: float = 0.0
    """CPU seconds the server's processes used during the load (API, writer, workers)."""
    database_cpu: float = 0.0
    """CPU seconds PostgreSQL's processes used during the load."""

    def cpu_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.requests if self.requests else float("nan")

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile_ms(self, p: float) -> float:
        return _ms(self.latencies, p) if self.latencies else float("nan")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding":
            raise RuntimeError("chunked responses are not expected from these endpoints")
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _drive(port: int, requests: Sequence[bytes], concurrency: int,
                 keep_bodies: int, budget: float) -> LoadResult:
    connections = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency))
    )
    pending = iter(requests)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    bodies: list[bytes] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for request in pending:
            if time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            writer.write(request)
            status, body = await asyncio.wait_for(_read_response(reader), timeout=120)
            latencies.append(time.perf_counter() - started)
            statuses[status] += 1
            if status != 200 and len(bodies) < keep_bodies:
                bodies.append(body)

    started = time.perf_counter()
    deadline = started + budget
    try:
        await asyncio.gather(*(client(r, w) for r, w in connections))
    finally:
        elapsed = time.perf_counter() - started
        for _, writer in connections:
            writer.close()
    return LoadResult(len(latencies), elapsed, latencies, statuses, bodies)


def run_load(port: int, requests: Sequence[bytes], concurrency: int,
             budget: float = 30.0) -> LoadResult:
    """Send ``requests`` over ``concurrency`` connections; stop starting new ones after
    ``budget`` seconds (the figures then cover the requests that were sent)."""
    result = asyncio.run(asyncio.wait_for(
        _drive(port, requests, concurrency, keep_bodies=3, budget=budget), LOAD_TIMEOUT))
    if result.ok != result.requests:
        say(f"  warning: {result.requests - result.ok} of {result.requests} requests failed: "
            f"{dict(result.statuses)} {[b[:200] for b in result.bodies]}")
    return result


# --- section: HTTP transfers ----------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    floor: dict[int, int]
    registry: dict[int, int]
    warmup: int
    issuance_reps: int
    proof_sizes: tuple[int, ...]
    proof_reps: int
    verify_ops: int
    verify_sizes: tuple[int, ...]
    budget: float
    """Seconds one HTTP load may run before it stops sending (slow setups send fewer)."""
    proof_budget: float
    """Seconds of proof timing per engine and size (slow configurations take fewer samples)."""
    verify_one_core: bool
    """Also verify the smallest ledger with one worker (not only with every core)."""
    rounds: int
    """Slices in which each HTTP load and its floor alternate."""


QUICK = Sizes(floor={1: 300, 32: 600}, registry={1: 100, 32: 300}, warmup=20,
              issuance_reps=7, proof_sizes=(10**4, 10**5), proof_reps=200, verify_ops=3000,
              verify_sizes=(3000,), budget=4.0, proof_budget=2.0, verify_one_core=False,
              rounds=2)
FULL = Sizes(floor={1: 2400, 32: 4800}, registry={1: 900, 32: 3000}, warmup=50,
             issuance_reps=31, proof_sizes=(10**4, 10**6), proof_reps=1000, verify_ops=10000,
             verify_sizes=(10**4, 10**5), budget=25.0, proof_budget=15.0,
             verify_one_core=True, rounds=3)


def _merged(results: Sequence[LoadResult]) -> LoadResult:
    """Several loads as one: their requests, their seconds added, their latencies pooled."""
    statuses: Counter[int] = Counter()
    for r in results:
        statuses.update(r.statuses)
    return LoadResult(
        sum(r.requests for r in results), sum(r.seconds for r in results),
        [x for r in results for x in r.latencies], statuses,
        [b for r in results for b in r.bodies][:3],
        sum(r.server_cpu for r in results), sum(r.database_cpu for r in results),
    )


@dataclass
class Paired:
    """A registry load and the floor's, run alternately in ``rounds`` slices each."""

    registry: LoadResult
    floor: LoadResult

    @property
    def ratio(self) -> float:
        return self.registry.rate / self.floor.rate if self.floor.rate else 0.0


def run_paired(floor: Callable[[int], LoadResult], registry: Callable[[int], LoadResult],
               n_floor: int, n_registry: int, rounds: int) -> Paired:
    """The registry and the floor measured in alternating slices (floor first, then registry
    first, and so on), so both span the same minutes: this virtual machine's speed drifts by
    a quarter within minutes, and a floor taken a minute apart from its registry figure moved
    the ratio by as much as any change to the code."""
    floors: list[LoadResult] = []
    registries: list[LoadResult] = []
    for i in range(rounds):
        slices = [(floor, n_floor, floors), (registry, n_registry, registries)]
        for load, n, results in slices if i % 2 == 0 else reversed(slices):
            results.append(load(n // rounds + (1 if i < n % rounds else 0)))
    return Paired(_merged(registries), _merged(floors))


def _record(figures: dict[str, Any], name: str, result: LoadResult) -> dict[str, Any]:
    entry = {
        "rate": round(result.rate, 1), "p50_ms": round(result.percentile_ms(0.50), 2),
        "p99_ms": round(result.percentile_ms(0.99), 2), "requests": result.requests,
        "failed": result.requests - result.ok, "seconds": round(result.seconds, 2),
        "server_cpu_ms_per_request": round(result.cpu_ms(result.server_cpu), 3),
        "postgresql_cpu_ms_per_request": round(result.cpu_ms(result.database_cpu), 3),
    }
    figures[name] = entry
    return entry


def _line(label: str, c: int, entry: Mapping[str, Any], floor: Mapping[str, Any] | None,
          ratio_target: float | None) -> str:
    text = (f"  {label:<22} c={c:<3} {entry['rate']:>8.1f} /s  p50 {entry['p50_ms']:>7.2f} ms"
            f"  p99 {entry['p99_ms']:>7.2f} ms")
    if floor is not None and ratio_target is not None:
        ratio = entry["rate"] / floor["rate"] if floor["rate"] else 0.0
        verdict = "ok" if ratio >= ratio_target else "BELOW"
        text += (f"  = {100 * ratio:5.1f}% of floor {floor['rate']:,.0f} /s (target >= "
                 f"{100 * ratio_target:.0f}%: {verdict})")
    if c == 32 and floor is not None:
        verdict = "ok" if entry["p99_ms"] < TARGETS["p99_ms_at_32"] else "ABOVE"
        text += (f"  p99 target < {TARGETS['p99_ms_at_32']:.0f} ms: {verdict} (the floor's "
                 f"{floor['p99_ms']:.1f} ms)")
    if entry["failed"]:
        text += f"  [{entry['failed']} failed]"
    return text


def bench_http(sizes: Sizes, workdir: Path, pg_base: str | None) -> dict[str, Any]:
    say("== transfers over HTTP (signed, durable; one uvicorn worker unless noted, and the "
        f"server's writer process); each beside the floor, the two run alternately in "
        f"{sizes.rounds} slices")
    figures: dict[str, Any] = {}
    floor_key = SigningKey.generate()
    floor_signed = [
        json.dumps(sign_instruction(floor_key, registry=ORIGIN, actor=HOLDER,
                                    type="credits.transfer", body={
            "account": SOURCE, "batch": "KH-JCM-KH901-2020-00001", "quantity": 1,
            "to_account": DESTINATION}, valid_for=VALID_FOR)).encode()
        for _ in range(64)
    ]
    floors: dict[tuple[int, int], list[LoadResult]] = {}
    slice_budget = sizes.budget / sizes.rounds
    floor_feed = itertools.cycle(floor_signed)
    with contextlib.ExitStack() as stack:
        floor_servers: dict[int, Served] = {}

        def floor_for(workers: int) -> Served:
            """The bare endpoint served by as many uvicorn workers as the registry it is held
            against: the same process setup."""
            if workers not in floor_servers:
                served = stack.enter_context(floor_server(workdir, workers=workers))
                if workers > 1:
                    time.sleep(2.0)  # let every worker finish importing before timing
                run_load(served.port, _take(served.port, floor_feed, sizes.warmup * 4), 4)
                floor_servers[workers] = served
            return floor_servers[workers]

        floor_for(1)
        engines = ["sqlite"] + (["postgresql"] if pg_base else [])
        for kind in engines:
            with database(kind, workdir, pg_base) as url:
                seeded = seed(url, workdir)
                batch = seeded.issue(10**9)
                worker_counts = [1, 2] if kind == "postgresql" else [1]
                total = sum(sizes.warmup + sum(sizes.registry.values()) for _ in worker_counts)
                bodies = [json.dumps(seeded.transfer(batch)).encode() for _ in range(total)]
                seeded.registry.engine.dispose()
                feed = iter(bodies)
                target = TARGETS[f"{kind}_ratio"]
                for workers in worker_counts:
                    floor = floor_for(workers)
                    with registry_server(seeded.settings, workdir, workers=workers) as served:
                        if workers > 1:
                            time.sleep(2.0)  # let every worker finish importing before timing
                        run_load(served.port, _take(served.port, feed, sizes.warmup), 2)
                        for c, n in sizes.registry.items():
                            paired = run_paired(
                                _load_from(floor, floor_feed, c, slice_budget),
                                _load_from(served, feed, c, slice_budget, kind == "postgresql"),
                                sizes.floor[c], n, sizes.rounds,
                            )
                            floors.setdefault((workers, c), []).append(paired.floor)
                            name = f"{kind}_w{workers}_c{c}"
                            entry = _record(figures, name, paired.registry)
                            floor_entry = _record({}, "floor", paired.floor)
                            entry["floor"] = floor_entry
                            entry["floor_ratio"] = round(paired.ratio, 3)
                            say(_line(f"{kind} workers={workers}", c, entry, floor_entry, target))
                            say(_cpu_line(entry, floor_entry))
                            if workers > 1 and c == 1 and entry["p50_ms"] > 35:
                                say("    (uvicorn --workers N binds a listener without "
                                    "IPPROTO_TCP, so accepted sockets keep Nagle on and each "
                                    "keep-alive response waits ~40 ms for a delayed ACK: "
                                    "Kludex/uvicorn#3149)")
                figures[f"{kind}_minimum_c1"] = _bench_minimum(
                    kind, url, workdir, floor_for(1), floor_feed, floor_key, sizes)
                if kind == "sqlite":
                    figures["audit"] = bench_audit(seeded)
    for (workers, c), results in sorted(floors.items()):
        # Every slice of a floor together: the bare endpoint over the whole section.
        entry = _record(figures, f"floor_c{c}" if workers == 1 else f"floor_w{workers}_c{c}",
                        _merged(results))
        label = "floor (bare FastAPI)" if workers == 1 else f"floor ({workers} workers)"
        say(_line(label, c, entry, None, None) + "  (all its slices)")
    return figures


def _bench_minimum(kind: str, url: str, workdir: Path, floor: Served, feed: Iterator[bytes],
                   key: SigningKey, sizes: Sizes) -> dict[str, Any]:
    """The least durable write at one client (``POST /v1/minimum``, served the way the floor
    is, on the engine's database), beside the floor: a lower bound to hold the target at one
    client against, besides the registry's own figure."""
    target = TARGETS[f"{kind}_ratio"]
    if kind == "sqlite":
        url = f"sqlite:///{workdir / f'minimum-{uuid.uuid4().hex[:8]}.db'}"
    env = {MINIMUM_URL: url, MINIMUM_KEY: key.public_key.to_b64()}
    budget = sizes.budget / sizes.rounds
    with floor_server(workdir, env=env) as served:
        run_load(served.port, _take(served.port, feed, sizes.warmup * 4, "/v1/minimum"), 1)
        paired = run_paired(
            _load_from(floor, feed, 1, budget),
            _load_from(served, feed, 1, budget, kind == "postgresql", "/v1/minimum"),
            sizes.floor[1], sizes.floor[1] // 2, sizes.rounds,
        )
    entry = _record({}, "minimum", paired.registry)
    floor_entry = _record({}, "floor", paired.floor)
    entry["floor"] = floor_entry
    entry["floor_ratio"] = round(paired.ratio, 3)
    verdict = ("above the target: not ruled out" if paired.ratio >= target
               else "even this is BELOW the target: out of reach here")
    say(_line(f"{kind} least durable", 1, entry, None, None)
        + f"  = {100 * paired.ratio:5.1f}% of floor {floor_entry['rate']:,.0f} /s ({verdict})")
    say("    (parse the body as the registry does, verify the holder's signature, sign once, "
        "commit one row under its Idempotency-Key: a lower bound of a transfer's work)")
    say(_cpu_line(entry, floor_entry))
    return entry


def _load_from(served: Served, feed: Iterator[bytes], c: int, budget: float,
               database: bool = False, path: str = "/v1/transfers") -> Callable[[int], LoadResult]:
    """A load of the next ``n`` requests of ``feed`` on ``c`` connections, for each ``n``,
    with the CPU the server's processes (and PostgreSQL's, with ``database``) used meanwhile."""
    def load(n: int) -> LoadResult:
        requests = _take(served.port, feed, n, path)
        server = [served.pid, *_descendants(served.pid)]
        postgres = _postgres_pids() if database else []
        before = _cpu_seconds(server), _cpu_seconds(postgres)
        result = run_load(served.port, requests, c, budget)
        result.server_cpu = _cpu_seconds(server) - before[0]
        result.database_cpu = _cpu_seconds(postgres) - before[1]
        return result
    return load


def _cpu_line(entry: Mapping[str, Any], floor: Mapping[str, Any]) -> str:
    """Where the CPU of a request went: the server's processes, PostgreSQL's, the floor's."""
    text = f"    CPU per request: server {entry['server_cpu_ms_per_request']:.2f} ms"
    if entry["postgresql_cpu_ms_per_request"]:
        text += f" + PostgreSQL {entry['postgresql_cpu_ms_per_request']:.2f} ms"
    return text + f"; the floor's server {floor['server_cpu_ms_per_request']:.2f} ms"


def _take(port: int, feed: Iterator[bytes], n: int, path: str = "/v1/transfers") -> list[bytes]:
    """The next ``n`` pre-signed transfers as requests, each with its own Idempotency-Key (the
    floor's feed cycles through a few bodies: its endpoint keeps nothing)."""
    return [http_request(port, path, next(feed), new_nonce()) for _ in range(n)]


def bench_audit(seeded: Seeded) -> dict[str, Any]:
    """The in-process ledger audit (signatures, chain, tree, checkpoints) over the HTTP run."""
    registry = seeded.registry
    with read_session(registry.engine) as session:
        started = time.perf_counter()
        report = ledger_service.audit_store(session, registry)
        elapsed = time.perf_counter() - started
    registry.engine.dispose()
    figures = {"entries": report.entries, "checkpoints": report.checkpoints, "ok": report.ok,
               "seconds": round(elapsed, 3),
               "entries_per_s": round(report.entries / elapsed, 1) if elapsed else 0.0}
    return figures


# --- section: issuance ----------------------------------------------------------------------------


def bench_issuance(sizes: Sizes, workdir: Path, pg_base: str | None) -> dict[str, Any]:
    say("== issuance, in-process through submit (a batch is one block per allocation)")
    figures: dict[str, Any] = {}
    for kind in ["sqlite"] + (["postgresql"] if pg_base else []):
        with database(kind, workdir, pg_base) as url:
            seeded = seed(url, workdir)
            times: dict[int, list[float]] = {1: [], 10**9: []}
            for rep in range(sizes.issuance_reps + 2):
                order = (1, 10**9) if rep % 2 else (10**9, 1)
                for quantity in order:
                    report = seeded.verified_report(quantity)
                    signed = seeded.signed(ADMIN, "credits.issue",
                                           seeded.issue_body(report, quantity))
                    started = time.perf_counter()
                    submit(seeded.registry, signed, expected_type="credits.issue",
                           idempotency_key=new_nonce())
                    elapsed = time.perf_counter() - started
                    if rep >= 2:  # the first two rounds warm caches
                        times[quantity].append(elapsed)
            seeded.registry.engine.dispose()
        one = 1000 * statistics.median(times[1])
        big = 1000 * statistics.median(times[10**9])
        spread = 1000 * statistics.pstdev(times[1] + times[10**9])
        ratio = big / one
        verdict = "ok" if abs(big - one) <= max(spread, 0.1 * one) else "DIFFERENT"
        say(f"  {kind:<10} 1 t: {one:6.2f} ms   10^9 t: {big:6.2f} ms   ratio {ratio:.3f}"
            f"  (stdev {spread:.2f} ms; target equal within noise: {verdict})")
        figures[kind] = {"ms_1t": round(one, 3), "ms_1e9t": round(big, 3),
                         "ratio": round(ratio, 3), "stdev_ms": round(spread, 3),
                         "reps": len(times[1])}
    return figures


# --- section: proofs ------------------------------------------------------------------------------


class LevelReader:
    """A ``NodeReader`` over in-memory levels (``levels[l][i]`` is node ``(l, i)``)."""

    def __init__(self, levels: Sequence[Sequence[bytes]]) -> None:
        self.levels = levels

    def get_nodes(self, keys: Sequence[merkle.NodeKey]) -> Mapping[merkle.NodeKey, bytes]:
        return {(lv, i): self.levels[lv][i] for lv, i in keys}


def synthetic_levels(n: int) -> list[list[bytes]]:
    """Every perfect subtree of ``n`` synthetic leaves, level by level."""
    levels = [[merkle.leaf_hash(b"bench-leaf-%d" % i) for i in range(n)]]
    while len(levels[-1]) >= 2:
        below = levels[-1]
        levels.append([merkle.node_hash(below[2 * i], below[2 * i + 1])
                       for i in range(len(below) // 2)])
    return levels


def _rows(levels: Sequence[Sequence[bytes]]) -> Iterator[tuple[int, int, bytes]]:
    for level, hashes in enumerate(levels):
        for idx, h in enumerate(hashes):
            yield level, idx, h


def load_tree(url: str, levels: Sequence[Sequence[bytes]]) -> None:
    """Bulk-load ``tree_node`` and one ledger row at seq n-1 (so the tree size reads n)."""
    n = len(levels[0])
    engine = make_engine(url)
    migrate(engine)
    raw = engine.raw_connection()
    try:
        if engine.dialect.name == "sqlite":
            cur = raw.cursor()
            cur.execute("PRAGMA synchronous=OFF")  # synthetic data: no need to wait for disk
            cur.execute("BEGIN")
            cur.executemany("INSERT INTO tree_node (level, idx, hash) VALUES (?, ?, ?)",
                            _rows(levels))  # type: ignore[arg-type]  # any iterable will do
            cur.execute("INSERT INTO ledger_entry (seq, kind, leaf_hash, envelope) "
                        "VALUES (?, 'bench.synthetic', ?, ?)", (n - 1, levels[0][-1], b"{}"))
            cur.execute("COMMIT")
            cur.execute("ANALYZE")
        else:
            pg = raw.driver_connection
            assert pg is not None
            with pg.cursor() as cur:
                with cur.copy("COPY tree_node (level, idx, hash) FROM STDIN") as copy:
                    for row in _rows(levels):
                        copy.write_row(row)
                cur.execute("INSERT INTO ledger_entry (seq, kind, leaf_hash, envelope) "
                            "VALUES (%s, 'bench.synthetic', %s, %s)",
                            (n - 1, levels[0][-1], b"{}"))
            pg.commit()
            with pg.cursor() as cur:
                cur.execute("ANALYZE tree_node")
                cur.execute("ANALYZE ledger_entry")
            pg.commit()
    finally:
        raw.close()
        engine.dispose()


def _ms(samples: Sequence[float], p: float) -> float:
    """The ``p`` quantile of ``samples`` (seconds) in ms, by nearest rank: the p99 of 100
    samples is the 99th, not the largest."""
    ordered = sorted(samples)
    return 1000 * ordered[max(math.ceil(p * len(ordered)) - 1, 0)]


def bench_proofs(sizes: Sizes, workdir: Path, pg_base: str | None) -> dict[str, Any]:
    say("== proofs through registry.service.ledger on a read session (synthetic tree_node)")
    figures: dict[str, Any] = {}
    rng = random.Random(6962)
    for n in sizes.proof_sizes:
        started = time.perf_counter()
        levels = synthetic_levels(n)
        root = merkle.root(n, LevelReader(levels))
        hashing = time.perf_counter() - started
        for kind in ["sqlite"] + (["postgresql"] if pg_base else []):
            with database(kind, workdir, pg_base) as url:
                started = time.perf_counter()
                load_tree(url, levels)
                loading = time.perf_counter() - started
                engine = make_engine(url)
                inclusion: list[float] = []
                consistency: list[float] = []
                lookup: list[float] = []
                with read_session(engine) as session:
                    deadline = time.perf_counter() + sizes.proof_budget
                    for i in range(sizes.proof_reps + 20):
                        if i > 40 and time.perf_counter() > deadline:
                            break
                        index = rng.randrange(n)
                        first = rng.randrange(1, n)
                        t0 = time.perf_counter()
                        row = session.get(TreeNode, (0, index))
                        t1 = time.perf_counter()
                        ip = ledger_service.inclusion_proof(session, index=index, tree_size=n)
                        t2 = time.perf_counter()
                        cp = ledger_service.consistency_proof(session, first=first, second=n)
                        t3 = time.perf_counter()
                        session.expunge_all()
                        if i < 20:  # warm-up, and check the answers against the known tree
                            assert row is not None and row.hash == levels[0][index]
                            assert ip.root == root and cp.second_root == root
                            merkle.verify_inclusion(levels[0][index], index, n, ip.proof, root)
                            merkle.verify_consistency(first, n, cp.proof, cp.first_root, root)
                            continue
                        lookup.append(t1 - t0)
                        inclusion.append(t2 - t1)
                        consistency.append(t3 - t2)
                engine.dispose()
            name = f"{kind}_{n}"
            floor = statistics.median(lookup) * 1000
            entry = {
                "inclusion_p50_ms": round(_ms(inclusion, 0.5), 3),
                "inclusion_p99_ms": round(_ms(inclusion, 0.99), 3),
                "consistency_p50_ms": round(_ms(consistency, 0.5), 3),
                "consistency_p99_ms": round(_ms(consistency, 0.99), 3),
                "floor_pk_lookup_ms": round(floor, 3),
                "inclusion_floor_ratio": round(_ms(inclusion, 0.5) / floor, 1),
                "consistency_floor_ratio": round(_ms(consistency, 0.5) / floor, 1),
                "tree_nodes": sum(len(lv) for lv in levels),
                "build_s": round(hashing + loading, 1),
            }
            figures[name] = entry
            target = ""
            if n >= 10**6:
                worst = max(entry["inclusion_p50_ms"], entry["consistency_p50_ms"])
                verdict = "ok" if worst < TARGETS["proof_ms_at_1e6"] else "ABOVE"
                target = f"  (target < {TARGETS['proof_ms_at_1e6']:.0f} ms at 10^6: {verdict})"
            say(f"  {kind:<10} n={n:<8} inclusion p50 {entry['inclusion_p50_ms']:.3f} ms"
                f" p99 {entry['inclusion_p99_ms']:.3f}   consistency p50"
                f" {entry['consistency_p50_ms']:.3f} ms p99 {entry['consistency_p99_ms']:.3f}"
                f"   floor (1 PK read) {floor:.3f} ms = x{entry['inclusion_floor_ratio']}"
                f"/x{entry['consistency_floor_ratio']}{target}")
        del levels
    return figures


# --- section: verification ------------------------------------------------------------------------


def _ed25519_verifies(n: int) -> float:
    """Seconds for ``n`` raw Ed25519 verifications of an entry-sized message."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    message = os.urandom(600)
    signature = key.sign(message)
    started = time.perf_counter()
    for _ in range(n):
        public.verify(signature, message)
    return time.perf_counter() - started


def fast_canonical(value: Any) -> bytes:
    """RFC 8785 bytes of ``value`` when it holds only ASCII strings, integers, lists and objects.

    That is all the synthetic ledger holds, and for such values sorted-key compact JSON is the
    canonical form; the generator checks it against the registry's own encoder before relying
    on it (``append_synthetic_transfers``).
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def append_synthetic_transfers(seeded: Seeded, batch: str, n: int, *, chunk: int = 5000) -> None:
    """Append ``n`` genuine, verifiable transfer entries straight into the ledger tables.

    Each is what ``submit`` would have appended: a holder-signed instruction, its effects, the
    entry signed by the registry in a DSSE envelope, chained by ``prev``, added to the Merkle tree
    and followed by a signed checkpoint. They ping-pong serial 1 between the two holders, so the
    replayed state stays two blocks and the verifier's memory is measured, not the state's. The
    first entries are checked byte for byte against ``seal_entry``. State tables are not updated
    (only the bundle is verified), and the rows are bulk-inserted, so 10^6 entries cost minutes
    of signing, not hours of HTTP.
    """
    from registry.client import rfc3339
    from registry.ledger.canonical import canonical_bytes
    from registry.ledger.checkpoint import Checkpoint, sign_checkpoint
    from registry.ledger.dsse import PAYLOAD_TYPE, Envelope, pae
    from registry.ledger.entry import Entry, format_time, parse_time, seal_entry
    from registry.ledger.keys import b64encode
    from registry.store import ledger_repo

    registry = seeded.registry
    signer = registry.signer
    with read_session(registry.engine) as session:
        size = ledger_repo.tree_size(session)
        rows = ledger_repo.entries_between(session, 0, size)
        compact = merkle.CompactRange()
        for row in rows:
            compact.append(row.leaf_hash)
        prev = rows[-1].leaf_hash
        last = Entry.from_bytes(Envelope.from_bytes(rows[-1].envelope).payload)
    start = parse_time(last.time) + timedelta(seconds=1)
    sides = [(HOLDER, SOURCE, DESTINATION), (BUYER, DESTINATION, SOURCE)]
    registry_key_id = signer.public_key.key_id
    engine = registry.engine
    for first in range(0, n, chunk):
        entries: list[tuple[int, str, bytes, bytes]] = []
        nodes: list[tuple[int, int, bytes]] = []
        checkpoints: list[tuple[int, bytes, str]] = []
        for i in range(first, min(n, first + chunk)):
            seq = size + i
            actor, source, destination = sides[i % 2]
            holder = seeded.keys[actor]
            when = start + timedelta(milliseconds=i)
            instruction = {
                "type": "credits.transfer", "registry": registry.origin, "actor": actor,
                "key_id": holder.public_key.key_id,
                "nonce": f"synthetic-{i:09d}", "expires": rfc3339(when + timedelta(hours=1)),
                "body": {"account": source, "batch": batch, "quantity": 1,
                         "to_account": destination},
            }
            signed_bytes = fast_canonical(instruction)
            entry = {
                "v": 1, "seq": seq, "time": format_time(when), "kind": "credits.transfer",
                "actor": actor, "prev": prev.hex(),
                "payload": {
                    "instruction": instruction,
                    "signature": b64encode(holder.sign(signed_bytes)),
                    "effects": {"batch": batch, "from": source, "to": destination,
                                "quantity": 1, "blocks": [{"start": 1, "end": 1}]},
                },
            }
            payload = fast_canonical(entry)
            envelope = fast_canonical({
                "payload": b64encode(payload), "payloadType": PAYLOAD_TYPE,
                "signatures": [{"keyid": registry_key_id,
                                "sig": b64encode(signer.sign(pae(PAYLOAD_TYPE, payload)))}],
            })
            if i < 4:  # the fast path must produce exactly the registry's bytes
                assert signed_bytes == canonical_bytes(instruction)
                assert envelope == seal_entry(Entry.model_validate(entry), signer)
            leaf = merkle.leaf_hash(envelope)
            nodes.extend((lv, idx, h) for (lv, idx), h in compact.append(leaf).items())
            root = compact.root()
            note = sign_checkpoint(Checkpoint(origin=registry.origin, size=seq + 1, root=root),
                                   name=registry.origin, key=signer)
            entries.append((seq, "credits.transfer", leaf, envelope))
            checkpoints.append((seq + 1, root, note))
            prev = leaf
        _bulk_insert(engine, entries, nodes, checkpoints)


def _bulk_insert(engine: Any, entries: Sequence[tuple[int, str, bytes, bytes]],
                 nodes: Sequence[tuple[int, int, bytes]],
                 checkpoints: Sequence[tuple[int, bytes, str]]) -> None:
    raw = engine.raw_connection()
    try:
        sqlite = engine.dialect.name == "sqlite"
        mark = "?" if sqlite else "%s"
        cur = raw.cursor()
        if sqlite:
            cur.execute("BEGIN")
        cur.executemany("INSERT INTO ledger_entry (seq, kind, leaf_hash, envelope) "
                        f"VALUES ({mark}, {mark}, {mark}, {mark})", entries)
        three = f"({mark}, {mark}, {mark})"
        cur.executemany(f"INSERT INTO tree_node (level, idx, hash) VALUES {three}", nodes)
        cur.executemany(f"INSERT INTO checkpoint (size, root, note) VALUES {three}", checkpoints)
        if sqlite:
            cur.execute("COMMIT")
        else:
            raw.commit()
    finally:
        raw.close()


def verifier_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("registry.ledger.verify_bundle") is not None


def _high_water_mb(pid: int | str) -> float:
    """Peak resident memory of one process (VmHWM): exact for an exec'd process, unlike
    ``ru_maxrss``, which Linux carries over from the parent across fork and exec."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (its children, theirs, ...)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in map(int, f.read().split()):
                    found += [child, *_descendants(child)]
    return found


def run_verify_child(bundle: Path, registry_key: str, workers: int) -> dict[str, Any]:
    """Verify ``bundle`` as an auditor does: ``registry verify --json`` in a process of its
    own, with its own worker processes (which, spawned, import the CLI anew: part of what an
    auditor waits for). The time is the report's own, from opening the bundle to the verdict;
    memory is the peak (VmHWM) of the command and the sum of its workers' peaks, sampled every
    20 ms from here while they live (exact for an exec'd process, unlike ``ru_maxrss``)."""
    cmd = [str(VENV_BIN / "registry"), "verify", str(bundle), "--registry-key", registry_key,
           "--workers", str(workers), "--json"]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        peaks: dict[int, float] = {}
        deadline = time.monotonic() + 3600
        while proc.poll() is None:
            for pid in [proc.pid, *_descendants(proc.pid)]:
                peaks[pid] = max(peaks.get(pid, 0.0), _high_water_mb(pid))
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        if proc.returncode not in (0, 2):  # 2: verified, and some check failed (reported)
            raise RuntimeError(f"registry verify failed ({proc.returncode}):\n"
                               f"{err.read()[-3000:]}")
        report = json.loads(out.read())
    if not report["ok"]:
        say(f"  verify FAILED: {json.dumps(report['failures'][:5])[:3000]}")
    return {
        "ok": report["ok"], "entries": report["entries"], "seconds": report["seconds"],
        "peak_rss_mb": peaks.get(proc.pid, 0.0),
        "workers_peak_rss_mb": sum(mb for pid, mb in peaks.items() if pid != proc.pid),
    }


def signatures_per_entry(bundle: Path) -> float:
    """Ed25519 signatures a verifier checks per entry of ``bundle``: every envelope, every
    instruction (all entries but the genesis) and every checkpoint."""
    entries = checkpoints = 0
    with bundle.open("rb") as lines:
        for line in lines:
            if line.startswith(b'{"type":"entry"'):
                entries += 1
            elif line.startswith(b'{"type":"checkpoint"'):
                checkpoints += 1
    return (2 * entries - 1 + checkpoints) / max(entries, 1)


def bench_verify(sizes: Sizes, workdir: Path, pg_base: str | None = None) -> dict[str, Any]:
    say("== verification")
    cores = os.cpu_count() or 1
    n = sizes.verify_ops
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        def raw_rate(workers: int) -> float:
            """Raw Ed25519 verifications/s on ``workers`` cores, now."""
            if workers == 1:
                return n / _ed25519_verifies(n)
            started = time.perf_counter()
            pool.map(_ed25519_verifies, [n] * workers)
            return n * workers / (time.perf_counter() - started)

        _ed25519_verifies(200)
        pool.map(_ed25519_verifies, [200] * cores)
        return _bench_verify(sizes, workdir, pg_base, raw_rate)


def _bench_verify(sizes: Sizes, workdir: Path, pg_base: str | None,
                  raw_rate: Callable[[int], float]) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    raw = {1: raw_rate(1), cores: raw_rate(cores)}
    say(f"  raw Ed25519 verify (floor): {raw[1]:,.0f} /s on 1 core, {raw[cores]:,.0f} /s on "
        f"{cores} cores; measured again around each verification, which is held against the "
        "two beside it together")
    figures: dict[str, Any] = {"ed25519_verify_per_s_1core": round(raw[1]),
                               f"ed25519_verify_per_s_{cores}cores": round(raw[cores]),
                               "cores": cores}
    if not verifier_available():
        say("  verify: not available (no registry/ledger/verify_bundle.py)")
        figures["bundle_verify"] = "not available"
        return figures
    from registry.service.export import export_bundle

    runs = [("sqlite", size) for size in sizes.verify_sizes]
    if pg_base is not None:
        # The same verifier on a PostgreSQL export of the largest size: exports alike.
        runs.append(("postgresql", max(sizes.verify_sizes)))
    for kind, size in runs:
        with database(kind, workdir, pg_base) as url:
            seeded = seed(url, workdir)
            batch = seeded.issue(10**9)
            started = time.perf_counter()
            append_synthetic_transfers(seeded, batch, size)
            generated = time.perf_counter() - started
            bundle = workdir / f"bundle-{size}.jsonl"
            started = time.perf_counter()
            export_bundle(seeded.registry.engine, bundle)
            exported = time.perf_counter() - started
            key = seeded.registry.note_verifier.verifier_string()
            seeded.registry.engine.dispose()
            total = size + 10
            one_core = (
                kind == "sqlite" and sizes.verify_one_core and size == min(sizes.verify_sizes)
            )
            tag = f"{size}" if kind == "sqlite" else f"{size}_postgresql"
            per_entry = signatures_per_entry(bundle)
            for workers in sorted({1, cores} if one_core else {cores}):
                before = raw_rate(workers)
                result = run_verify_child(bundle, key, workers)
                # As many verifications before as after: together, twice as many over the time
                # both took (the harmonic mean of the two rates).
                floor = 2 / (1 / before + 1 / raw_rate(workers))
                rate = result["entries"] / result["seconds"]
                ratio = rate / floor
                # The floor in entries/s: raw verifications/s over the signatures each entry
                # needs checked (registry envelope, holder's instruction, its share of the
                # checkpoints). The verifier can never beat it; the gap is everything else.
                share = rate * per_entry / floor
                entry = {
                    "entries": result["entries"], "ok": result["ok"],
                    "entries_per_s": round(rate, 1), "ed25519_ratio": round(ratio, 3),
                    "signatures_per_entry": round(per_entry, 3),
                    "ed25519_verify_per_s": round(floor),
                    "signature_floor_entries_per_s": round(floor / per_entry, 1),
                    "signature_floor_ratio": round(share, 3),
                    "seconds": round(result["seconds"], 2),
                    "peak_rss_mb": round(result["peak_rss_mb"], 1),
                    "workers_peak_rss_mb": round(result["workers_peak_rss_mb"], 1),
                }
                figures[f"bundle_{tag}_w{workers}"] = entry
                verdict = "ok" if share >= TARGETS["verify_signature_share"] else "BELOW"
                say(f"  verify n={total:<8} {kind:<10} workers={workers}: {rate:8,.0f} entries/s = "
                    f"{ratio:.3f} x raw Ed25519 on {workers} core(s); {per_entry:.2f} signatures "
                    f"per entry, so floor {floor / per_entry:,.0f} entries/s and "
                    f"{100 * share:.0f}% of it (target >= "
                    f"{100 * TARGETS['verify_signature_share']:.0f}%: {verdict}); peak RSS "
                    f"{entry['peak_rss_mb']:.0f} MB (workers {entry['workers_peak_rss_mb']:.0f} MB)"
                    f"; {'PASS' if result['ok'] else 'FAIL'}")
            figures[f"bundle_{tag}_generate_s"] = round(generated, 1)
            figures[f"bundle_{tag}_export_s"] = round(exported, 1)
            figures[f"bundle_{tag}_bytes"] = bundle.stat().st_size
            say(f"  (n={total}: generated in {generated:.1f} s, exported in {exported:.1f} s, "
                f"{bundle.stat().st_size / 1e6:.1f} MB)")
            bundle.unlink()
    return figures


# --- profile --------------------------------------------------------------------------------------


def _layer(where: str, func: str) -> str:
    """Which layer a profiled function belongs to, for the per-layer summary."""
    text = f"{where} {func}"
    for needle, layer in (("sqlite3", "sqlite3 driver (incl. commit/fsync)"),
                          ("psycopg", "psycopg driver (incl. commit/fsync)"),
                          ("sqlalchemy", "SQLAlchemy core+ORM"),
                          ("sqlmodel", "SQLAlchemy core+ORM"),
                          ("rfc8785", "RFC 8785 encoding"), ("canonical.py", "RFC 8785 encoding"),
                          ("ed25519", "Ed25519 sign/verify"), ("pydantic", "pydantic"),
                          ("registry/", "registry code"), ("hashlib", "hashing"),
                          ("sha256", "hashing")):
        if needle in text:
            return layer
    return "other (stdlib, builtins)"


def profile_transfers(workdir: Path, n: int, kind: str, pg_base: str | None,
                      batch_size: int = 1) -> None:
    """cProfile of ``n`` transfers through ``submit``: the path every POST /v1/transfers takes
    after the HTTP layer, on an engine with a seeded registry. With ``batch_size`` > 1 they are
    carried out that many to a transaction, as the writer does under concurrent load."""
    def carry_out(requests: Sequence[dict[str, Any]]) -> None:
        works = [prepare(seeded.registry, r, expected_type="credits.transfer",
                         idempotency_key=new_nonce()) for r in requests]
        for i in range(0, len(works), batch_size):
            for answer in seeded.registry.writes.run_together(works[i:i + batch_size]):
                if isinstance(answer, Exception):
                    raise answer

    with database(kind, workdir, pg_base) as url:
        seeded = seed(url, workdir)
        batch = seeded.issue(10**9)
        signed = [seeded.transfer(batch) for _ in range(n + 20)]
        carry_out(signed[:20])
        plain = time.perf_counter()
        carry_out(signed[20:20 + n // 2])
        plain = (time.perf_counter() - plain) / (n // 2)
        profiler = cProfile.Profile()
        profiler.enable()
        carry_out(signed[20 + n // 2:])
        profiler.disable()
        seeded.registry.engine.dispose()
    profiled = n - n // 2
    say(f"== profile: {profiled} transfers through submit() on {kind}, {batch_size} a "
        f"transaction; "
        f"{1000 * plain:.2f} ms each without the profiler")
    stats = pstats.Stats(profiler)
    total = max(stats.total_tt, 1e-9)  # type: ignore[attr-defined]
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    rows = []
    layers: Counter[str] = Counter()
    for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in raw.items():
        where = filename.replace(str(ROOT) + "/", "").replace(str(VENV_BIN.parent), ".venv")
        rows.append((tottime, cumtime, calls, f"{where}:{line}({func})"))
        layers[_layer(where, func)] += tottime
    say("  own time by layer:")
    for layer, seconds in layers.most_common():
        say(f"    {100 * seconds / total:5.1f}%  {layer}")
    say("  by own time (tottime):")
    for tottime, cumtime, calls, name in sorted(rows, reverse=True)[:25]:
        say(f"    {100 * tottime / total:5.1f}%  cum {100 * cumtime / total:5.1f}%"
            f"  {calls / profiled:6.1f}/req  {name}")
    say("  registry functions by cumulative time:")
    for tottime, cumtime, calls, name in sorted(rows, key=lambda r: -r[1]):
        if name.startswith("registry/") and cumtime / total > 0.02:
            say(f"    cum {100 * cumtime / total:5.1f}%  own {100 * tottime / total:5.1f}%"
                f"  {calls / profiled:6.1f}/req  {name}")


# --- main -----------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="fewer requests, 10^5 instead of 10^6 for proofs (under a minute)")
    parser.add_argument("--only", action="append", default=None,
                        choices=["http", "issuance", "proofs", "verify"],
                        help="run only these sections (repeatable)")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "REGISTRY_BENCH_POSTGRES_URL", os.environ.get("REGISTRY_TEST_POSTGRES_URL")),
        help="PostgreSQL base URL (a schema is created and dropped); default "
             "$REGISTRY_BENCH_POSTGRES_URL or $REGISTRY_TEST_POSTGRES_URL; none: SQLite only")
    parser.add_argument("--verify-sizes", type=lambda v: tuple(int(x) for x in v.split(",")),
                        default=None, metavar="N,N",
                        help="ledger sizes for the bundle verification (default 10000 with "
                             "--quick, 10000,100000 otherwise; 1000000 takes about half an hour "
                             "on two cores)")
    parser.add_argument("--profile", type=int, metavar="N", default=None,
                        help="instead: cProfile N transfers through submit() and print hotspots")
    parser.add_argument("--profile-postgresql", action="store_true",
                        help="with --profile: on PostgreSQL instead of SQLite")
    parser.add_argument("--profile-batch", type=int, metavar="K", default=1,
                        help="with --profile: K transfers to a transaction (default 1)")
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--floor-workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor:
        serve_floor(args.serve_floor, args.floor_workers)
        return 0
    sizes = QUICK if args.quick else FULL
    if args.verify_sizes:
        sizes = replace(sizes, verify_sizes=args.verify_sizes)
    sections = args.only or ["http", "issuance", "proofs", "verify"]
    pg_base: str | None = args.postgres_url
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="registry-bench-") as tmp:
        workdir = Path(tmp)
        if args.profile:
            kind = "postgresql" if args.profile_postgresql else "sqlite"
            if kind == "postgresql" and not pg_base:
                parser.error("--profile-postgresql needs --postgres-url")
            profile_transfers(workdir, args.profile, kind, pg_base, args.profile_batch)
            return 0
        say(f"registry bench ({'quick' if args.quick else 'full'}); {os.cpu_count()} cores; "
            f"PostgreSQL: {'yes' if pg_base else 'skipped (set REGISTRY_BENCH_POSTGRES_URL)'}")
        figures: dict[str, Any] = {"mode": "quick" if args.quick else "full",
                                   "targets": TARGETS}
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "http": lambda: bench_http(sizes, workdir, pg_base),
            "issuance": lambda: bench_issuance(sizes, workdir, pg_base),
            "proofs": lambda: bench_proofs(sizes, workdir, pg_base),
            "verify": lambda: bench_verify(sizes, workdir, pg_base),
        }
        for name in sections:
            t0 = time.perf_counter()
            figures[name] = steps[name]()
            say(f"  ({name}: {time.perf_counter() - t0:.1f} s)")
    figures["seconds"] = round(time.perf_counter() - started, 1)
    figures["bench_peak_rss_mb"] = round(peak_rss_mb(), 1)
    say(json.dumps(figures, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
