"""The HTTP service: Rekognition's AWS JSON 1.1 protocol on POST /, SigV4, /healthz and /metrics.

One straight path per request: read the body (capped) → verify the SigV4 signature → resolve the operation →
parse JSON → run the service operation for the key's organisation → JSON response or AWS error.
The wire layer knows nothing of SQL: it reaches the store only through the service and the key ring.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path

import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from facegate.audit import AuditLog, AuditUnavailable
from facegate.errors import (
    AccessDeniedException,
    FacegateError,
    InternalServerError,
    SerializationException,
    UnknownOperationException,
    ValidationException,
)
from facegate.governance import GateOutcome, Governance
from facegate.keys import KeyRing
from facegate.server import sigv4
from facegate.server.admin import admin_routes
from facegate.server.workers import OperationRunner, prepare_search_indexes_in_background

log = logging.getLogger("facegate.server")

AMZ_JSON = "application/x-amz-json-1.1"
TARGET_PREFIX = "RekognitionService."
# Two 5 MB images (CompareFaces) are ~14 MB once base64-encoded: nothing legitimate is larger.
MAX_BODY = 16 * 1024 * 1024


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


def create_app(
    data_dir: Path,
    *,
    detector: str = "hog",
    workers: int | None = None,
    queue: int | None = None,
    runtime: str = "onnx",
) -> Starlette:
    from facegate.api import build_service

    service = build_service(Path(data_dir), detector=detector, runtime=runtime)
    keys = KeyRing(service.store, Path(data_dir))
    governance = Governance(service.store, keys, AuditLog(Path(data_dir)), model_version=service.engine.model_version)
    workers = workers or os.cpu_count() or 1
    runner = OperationRunner(
        service, Path(data_dir), detector, workers, queue if queue is not None else 4 * workers, runtime=runtime
    )
    metrics = Metrics(runner)

    async def record(outcome, principal, operation, **facts) -> None:
        # A durable append waits for a disk sync: off the event loop, and grouped with concurrent ones.
        await anyio.to_thread.run_sync(lambda: governance.record_request(outcome, principal, operation, **facts))

    async def rekognition(request: Request) -> Response:
        started = time.perf_counter()
        operation = "unknown"
        request_id = str(uuid.uuid4())
        principal = outcome = None
        facts: dict = {}
        try:
            body = await _read_body(request)
            principal = sigv4.verify(keys, request.method, request.url.path, request.url.query, request.headers, body)
            if principal.role != "client":
                raise AccessDeniedException("Administrator keys are for the admin API, not the Rekognition API.")
            target = request.headers.get("x-amz-target", "")
            name = target.removeprefix(TARGET_PREFIX)
            if not target.startswith(TARGET_PREFIX) or name not in service.operations:
                raise UnknownOperationException(f"Operation {target[:100]!r} is not supported by facegate.")
            operation = name
            params = _parse_json(body)
            facts["image_sha256"] = _image_digests(params)
            # The gate decides before any image is decoded or any face compared.
            outcome = governance.gate(
                principal,
                operation,
                params,
                case_reference=request.headers.get("x-facegate-case"),
                consent_reference=request.headers.get("x-facegate-consent"),
            )
            if not outcome.decision.allowed:
                await record(
                    outcome,
                    principal,
                    operation,
                    decision="deny",
                    reason=outcome.decision.reason,
                    latency_ms=_ms(started),
                    request_id=request_id,
                    **facts,
                )
                raise AccessDeniedException(
                    f"Denied by policy {', '.join(outcome.decision.policies) or '(none)'}: {outcome.decision.reason}.",
                    audited=True,
                )
            result = await runner.call(principal.owner, operation, outcome.params)
            facts.update(governance.summarise_result(operation, result))
            await record(
                outcome,
                principal,
                operation,
                decision="allow",
                latency_ms=_ms(started),
                request_id=request_id,
                model_version=result.get("FaceModelVersion"),
                **facts,
            )
            response = JSONResponse({**result, **_decision_members(outcome)}, media_type=AMZ_JSON)
            _decision_headers(response, outcome)
            code = "OK"
        except FacegateError as exc:
            code, response = exc.code, _error_response(exc)
            if not getattr(exc, "audited", False):
                try:
                    await record(
                        outcome,
                        principal,
                        operation,
                        decision="error",
                        error_code=exc.code,
                        reason=exc.message[:500],
                        latency_ms=_ms(started),
                        request_id=request_id,
                        **facts,
                    )
                except AuditUnavailable as audit_error:
                    code, response = audit_error.code, _error_response(audit_error)
        except Exception:
            log.exception("%s failed", operation)
            exc = InternalServerError("facegate failed to process the request; it has been logged.")
            code, response = exc.code, _error_response(exc)
        response.headers["x-amzn-RequestId"] = request_id
        metrics.requests.labels(operation, code).inc()
        metrics.latency.labels(operation).observe(time.perf_counter() - started)
        if code != "OK":
            metrics.errors.labels(code).inc()
        return response

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "workers": runner.workers, "in_flight": runner.in_flight})

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def not_found(request: Request) -> Response:
        return _error_response(UnknownOperationException(f"No such endpoint: {request.method} {request.url.path}"), 404)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        runner.warm_up()
        prepare_search_indexes_in_background(service)
        try:
            yield
        finally:
            runner.close()
            service.store.close()

    app = Starlette(
        routes=[
            Route("/", rekognition, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
            *admin_routes(governance, keys, _read_body),
            Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]),
        ],
        lifespan=lifespan,
    )
    app.state.keys = keys
    app.state.runner = runner
    return app


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise SerializationException(f"Content-Length {declared[:20]!r} is not a number.")
        if int(declared) > MAX_BODY:
            raise PayloadTooLarge(f"The request body is {int(declared):,} bytes; at most {MAX_BODY:,} are accepted.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadTooLarge(f"The request body exceeds {MAX_BODY:,} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(body: bytes) -> dict:
    if not body.strip():
        return {}
    try:
        params = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise SerializationException(f"The request body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(params, dict):
        raise SerializationException(f"The request body must be a JSON object, not {type(params).__name__}.")
    return params


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _image_digests(params: dict) -> list[str] | None:
    """SHA-256 of each image in the request (the audit keeps these, never the image)."""
    digests = []
    for member in ("Image", "SourceImage", "TargetImage"):
        image = params.get(member)
        data = image.get("Bytes") if isinstance(image, dict) else None
        if isinstance(data, str):
            with contextlib.suppress(ValueError):
                digests.append(hashlib.sha256(base64.b64decode(data, validate=True)).hexdigest())
    return digests or None


def _decision_members(outcome: GateOutcome) -> dict:
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


def _decision_headers(response: Response, outcome: GateOutcome) -> None:
    response.headers["x-facegate-policies"] = ",".join(outcome.decision.policies)
    if outcome.threshold_applied is not None:
        response.headers["x-facegate-threshold-applied"] = f"{outcome.threshold_applied:g}"
    if outcome.decision.obligations.human_review:
        response.headers["x-facegate-human-review"] = str(outcome.decision.obligations.reviewers)
    if outcome.decision.fairness is not None:
        response.headers["x-facegate-expected-false-candidates"] = f"{outcome.decision.fairness.expected:.4g}"


def _error_response(error: FacegateError, status: int | None = None) -> JSONResponse:
    return JSONResponse(
        error.to_wire(),
        status_code=status or error.status,
        media_type=AMZ_JSON,
        headers={"x-amzn-ErrorType": error.code},
    )
