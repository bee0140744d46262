"""The HTTP service: Rekognition's AWS JSON 1.1 protocol on POST /, SigV4, /healthz and /metrics.

One straight path per request: read the body (capped in size and time) → verify the SigV4 signature → resolve
the operation → parse JSON → the governed operation (gate → service → audit, ``governed.py``) on a thread →
its typed result as Rekognition's JSON (``facegate/wire.py``), or an AWS error. The wire layer knows nothing
of SQL: it reaches the store only through the governed operation and the key ring.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from pathlib import Path

import anyio
import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from facegate.audit import AuditUnavailable
from facegate.compose import Settings, build
from facegate.errors import (
    AccessDeniedException,
    FacegateError,
    InternalServerError,
    RequestTimeoutException,
    SerializationException,
    ThrottlingException,
    UnknownOperationException,
    ValidationException,
)
from facegate.governance import GateOutcome
from facegate.governed import RequestContext, image_digests
from facegate.server import sigv4
from facegate.server.admin import admin_routes
from facegate.server.console import console_routes
from facegate.server.protocol import GuardedH11Protocol
from facegate.server.wire import aws_json, error_response, parse_json
from facegate.server.workers import OperationRunner, prepare_search_indexes_in_background
from facegate.store import ReviewCase
from facegate.wire import to_wire

log = logging.getLogger("facegate.server")

TARGET_PREFIX = "RekognitionService."
# facegate's own operations on the same endpoint, signed the same way: a client polls its review cases.
REVIEW_PREFIX = "FacegateReview."
REVIEW_OPERATIONS = frozenset({"GetReviewCase"})
# Two 5 MB images (CompareFaces) are ~14 MB once base64-encoded: nothing legitimate is larger.
MAX_BODY = 16 * 1024 * 1024
# A body must keep arriving (no pause longer than the idle deadline) and be complete within the total one.
BODY_IDLE_S = 10.0
BODY_TOTAL_S = 60.0
MAX_READING_BODIES = 64


class PayloadTooLarge(ValidationException):
    status = 413


class Metrics:
    def __init__(self, runner: OperationRunner) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "facegate_requests", "Rekognition API requests", ["operation", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "facegate_request_seconds",
            "Rekognition API request latency",
            ["operation"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.errors = Counter("facegate_errors", "Errors by code", ["code"], registry=self.registry)
        Gauge("facegate_queue_depth", "Requests waiting for a worker", registry=self.registry).set_function(
            lambda: runner.queue_depth
        )
        Gauge("facegate_in_flight", "Requests being processed", registry=self.registry).set_function(
            lambda: runner.in_flight
        )


def create_app(settings: Settings, *, workers: int | None = None, queue: int | None = None) -> Starlette:
    """The HTTP service over facegate assembled from ``settings``, with ``workers`` face worker processes and
    room for ``queue`` more requests in flight."""
    facegate = build(settings)
    service, keys, governance, governed = facegate.service, facegate.keys, facegate.governance, facegate.governed
    regions = settings.regions
    workers = workers or os.cpu_count() or 1
    runner = OperationRunner(
        service,
        Path(settings.data_dir),
        settings.detector,
        workers,
        queue if queue is not None else 4 * workers,
        runtime=settings.runtime,
    )
    metrics = Metrics(runner)

    async def record(principal, operation, **facts) -> None:
        # A durable append waits for a disk sync: off the event loop, and grouped with concurrent ones.
        await anyio.to_thread.run_sync(lambda: governance.record_request(None, principal, operation, **facts))

    async def rekognition(request: Request) -> Response:
        started = time.perf_counter()
        operation = "unknown"
        request_id = str(uuid.uuid4())
        principal = None
        try:
            body = await read_body(request)
            principal = sigv4.verify(
                keys, request.method, request.url.path, request.url.query, request.headers, body, regions=regions
            )
            if principal.role != "client":
                raise AccessDeniedException("Administrator keys are for the admin API, not the Rekognition API.")
            target = request.headers.get("x-amz-target", "")
            operation = _operation(target, service.operations)
            params = parse_json(body)
            context = RequestContext(
                case_reference=request.headers.get("x-facegate-case"),
                consent_reference=request.headers.get("x-facegate-consent"),
                request_id=request_id,
                image_sha256=image_digests(params),
                started=started,
            )
            # Gate → service → audit, on a thread; the gate decides before any image is decoded.
            executed = await runner.run(governed.execute, principal, operation, params, context)
            decision = _decision_members(executed.gate, executed.review_case)
            response = aws_json({**to_wire(operation, executed.result), **decision})
            _decision_headers(response, executed.gate, executed.review_case)
            code = "OK"
        except Exception as raised:
            if isinstance(raised, FacegateError):
                exc = raised
            else:
                log.exception("%s failed", operation)
                exc = InternalServerError("facegate failed to process the request; it has been logged.")
            code, response = exc.code, error_response(exc)
            if exc.audited:
                pass
            elif principal is None:
                # Unauthenticated: counted per source and minute, so a flood costs bounded disk and syncs.
                governance.tally_unauthenticated(_source(request), exc.code)
            else:
                try:
                    await record(
                        principal,
                        operation,
                        request_id=request_id,
                        decision="error",
                        error_code=exc.code,
                        reason=exc.message[:500],
                        latency_ms=_ms(started),
                    )
                except AuditUnavailable as audit_error:
                    code, response = audit_error.code, error_response(audit_error)
                except Exception:
                    log.exception("auditing a failed %s failed", operation)
                    audit_error = AuditUnavailable("The request failed and could not be audited.")
                    code, response = audit_error.code, error_response(audit_error)
        response.headers["x-amzn-RequestId"] = request_id
        metrics.requests.labels(operation, code).inc()
        metrics.latency.labels(operation).observe(time.perf_counter() - started)
        if code != "OK":
            metrics.errors.labels(code).inc()
        return response

    reading = 0

    async def read_body(request: Request) -> bytes:
        nonlocal reading
        if reading >= MAX_READING_BODIES:
            raise ThrottlingException(f"facegate is receiving {reading} request bodies at once: retry later.")
        reading += 1
        try:
            return await _read_body(request)
        finally:
            reading -= 1

    async def healthz(request: Request) -> Response:
        return aws_json({"status": "ok", "workers": runner.workers, "in_flight": runner.in_flight})

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def refused(request: Request, error: FacegateError, status: int) -> Response:
        """A request no route serves: AWS-shaped, counted with the other unauthenticated ones."""
        governance.tally_unauthenticated(_source(request), error.code)
        response = error_response(error, status)
        response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
        metrics.errors.labels(error.code).inc()
        return response

    async def not_found(request: Request) -> Response:
        path = request.url.path[:200]
        return refused(request, UnknownOperationException(f"No such endpoint: {request.method} {path}"), 404)

    async def not_allowed(request: Request) -> Response:
        message = f"{request.method} is not supported on /: send POST with X-Amz-Target."
        return refused(request, UnknownOperationException(message), 405)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        runner.warm_up()
        prepare_search_indexes_in_background(service)
        facegate.jobs.start()  # video jobs, including those a stopped server left in progress
        flusher = governance.start_tally_flusher()
        GuardedH11Protocol.on_refusal = governance.tally_unauthenticated
        try:
            yield
        finally:
            flusher.set()
            governance.flush_unauthenticated()
            facegate.jobs.close()  # before the workers: a batch in flight finishes, the job is left to resume
            runner.close()
            facegate.close()

    app = Starlette(
        routes=[
            Route("/", rekognition, methods=["POST"]),
            Route("/", not_allowed, methods=["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
            *admin_routes(governance, keys, read_body, regions),
            *console_routes(facegate.console_accounts, governed.review, governance, read_body),
            Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
        ],
        lifespan=lifespan,
        exception_handlers={Exception: _unexpected, 404: _http_error, 405: _http_error},
    )
    app.state.keys = keys
    app.state.runner = runner
    return app


async def _read_body(request: Request) -> bytes:
    """The body, capped in size and in time: no pause over ``BODY_IDLE_S``, all of it within ``BODY_TOTAL_S``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise SerializationException(f"Content-Length {declared[:20]!r} is not a number.")
        if int(declared) > MAX_BODY:
            raise PayloadTooLarge(f"The request body is {int(declared):,} bytes; at most {MAX_BODY:,} are accepted.")
    chunks, size = [], 0
    deadline = anyio.current_time() + BODY_TOTAL_S
    stream = request.stream().__aiter__()
    while True:
        wait = min(BODY_IDLE_S, deadline - anyio.current_time())
        chunk = None
        with anyio.move_on_after(max(wait, 0.0)):
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                return b"".join(chunks)
            except ClientDisconnect:
                raise RequestTimeoutException(
                    f"The client closed the connection after {size:,} bytes of the request body."
                ) from None
        if chunk is None:
            raise RequestTimeoutException(
                f"The request body did not arrive in time ({size:,} bytes received"
                + (f" of {int(declared):,} declared" if declared else "")
                + f"; a body may pause at most {BODY_IDLE_S:g} s and must be complete within {BODY_TOTAL_S:g} s)."
            )
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadTooLarge(f"The request body exceeds {MAX_BODY:,} bytes.")
        chunks.append(chunk)


def _source(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _operation(target: str, operations: frozenset[str]) -> str:
    if target.startswith(TARGET_PREFIX) and target.removeprefix(TARGET_PREFIX) in operations:
        return target.removeprefix(TARGET_PREFIX)
    if target.startswith(REVIEW_PREFIX) and target.removeprefix(REVIEW_PREFIX) in REVIEW_OPERATIONS:
        return target.removeprefix(REVIEW_PREFIX)
    raise UnknownOperationException(f"Operation {target[:100]!r} is not supported by facegate.")


def _decision_members(outcome: GateOutcome, case: ReviewCase | None = None) -> dict:
    """What the gate applied, as a response member botocore ignores and raw clients can read."""
    obligations = outcome.decision.obligations
    if outcome.threshold_applied is None and not obligations.human_review:
        return {}
    decision = {
        "Policies": list(outcome.decision.policies),
        "ThresholdRequested": outcome.threshold_requested,
        "ThresholdApplied": outcome.threshold_applied,
        "HumanReviewRequired": obligations.human_review,
        "ReviewersRequired": obligations.reviewers,
    }
    if case is not None:  # the matches went to review; under two-person review the client has none yet
        decision["ReviewCase"] = {
            "CaseId": case.case_id,
            "Status": case.status.upper(),
            "MatchesWithheld": case.withheld,
        }
    fairness = outcome.decision.fairness
    if fairness is not None:
        decision["ExpectedFalseCandidates"] = {
            "PerSearch": fairness.expected,
            "CollectionSize": fairness.collection_size,
            "AtThreshold": fairness.threshold,
            "WorstGroup": fairness.worst_group,
            "WorstGroupFMR": fairness.worst_fmr,
            "FairnessAudit": fairness.audit,
        }
    return {"FacegateDecision": decision}


def _decision_headers(response: Response, outcome: GateOutcome, case: ReviewCase | None = None) -> None:
    response.headers["x-facegate-policies"] = ",".join(outcome.decision.policies)
    if case is not None:
        response.headers["x-facegate-review-case"] = case.case_id
    if outcome.threshold_applied is not None:
        response.headers["x-facegate-threshold-applied"] = f"{outcome.threshold_applied:g}"
    if outcome.decision.obligations.human_review:
        response.headers["x-facegate-human-review"] = str(outcome.decision.obligations.reviewers)
    if outcome.decision.fairness is not None:
        response.headers["x-facegate-expected-false-candidates"] = f"{outcome.decision.fairness.expected:.4g}"


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 400)
    return error_response(UnknownOperationException(f"{request.method} {request.url.path[:200]}: {exc}"), status)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path[:200])
    return error_response(InternalServerError("facegate failed to process the request; it has been logged."))
