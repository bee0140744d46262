"""The admin HTTP API under /admin: organisations, use cases, keys, policies and the audit log's head.

Separate credentials from the Rekognition endpoint: requests are SigV4-signed (service name
``facegate-admin``) with an administrator key; client keys are refused. Every route calls the same
``Governance`` operations as the `facegate orgs|usecases|keys|policies` commands, which audit each change.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from facegate.errors import AccessDeniedException, FacegateError, InternalServerError, InvalidParameterException
from facegate.governance import Governance
from facegate.keys import KeyRing
from facegate.policy.templates import TEMPLATES
from facegate.server import sigv4
from facegate.server.wire import aws_json, error_response, parse_json

ADMIN_SERVICE = "facegate-admin"
log = logging.getLogger("facegate.server")


def admin_routes(governance: Governance, keys: KeyRing, read_body, regions: tuple[str, ...]) -> list[Route]:
    async def call(request: Request, action) -> Response:
        principal = None
        request_id = str(uuid.uuid4())
        try:
            body = await read_body(request)
            principal = sigv4.verify(
                keys,
                request.method,
                request.url.path,
                request.url.query,
                request.headers,
                body,
                service=ADMIN_SERVICE,
                regions=regions,
            )
            if principal.role != "admin":
                raise AccessDeniedException("The admin API needs an administrator key.")
            payload = parse_json(body)
            actor = f"admin:{principal.access_key_id}"
            response = aws_json(action(request, payload, actor))
        except Exception as raised:
            exc = raised if isinstance(raised, FacegateError) else InternalServerError("The admin request failed.")
            if not isinstance(raised, FacegateError):
                log.exception("admin %s failed", request.url.path[:200])
            if principal is None:
                governance.tally_unauthenticated(request.client.host if request.client else "unknown", exc.code)
            else:
                governance.record_request(
                    None,
                    principal,
                    f"admin {request.method} {request.url.path[:200]}",
                    decision="error",
                    error_code=exc.code,
                    reason=exc.message[:500],
                    request_id=request_id,
                )
            response = error_response(exc, exc.status if exc.status != 400 else _status(exc))
        response.headers["x-amzn-RequestId"] = request_id
        return response

    def route(path: str, action, methods=("POST",)) -> Route:
        async def endpoint(request: Request) -> Response:
            return await call(request, action)

        return Route(path, endpoint, methods=list(methods))

    def create_org(request, p, actor):
        org = governance.create_organisation(
            _required(p, "Name"),
            _required(p, "Category"),
            p.get("Jurisdiction", ""),
            tuple(p.get("Groups", ())),
            actor=actor,
        )
        return {"Organisation": org.name, "Status": org.status}

    def org_status(request, p, actor):
        name = request.path_params["name"]
        governance.set_organisation_status(name, _required(p, "Status"), _required(p, "Reason"), actor=actor)
        return {"Organisation": name, "Status": p["Status"]}

    def list_orgs(request, p, actor):
        return {"Organisations": [asdict(o) for o in governance.organisations()]}

    def create_use_case(request, p, actor):
        use_case = governance.create_use_case(
            _required(p, "Organisation"),
            _required(p, "Purpose"),
            collections=tuple(p["Collections"]) if p.get("Collections") else None,
            valid_from=p.get("ValidFrom"),
            valid_until=p.get("ValidUntil"),
            legal_basis=p.get("LegalBasis"),
            authorisation_reference=p.get("AuthorisationReference"),
            approver=p.get("Approver"),
            actor=actor,
        )
        return {"UseCaseId": use_case.use_case_id}

    def revoke_use_case(request, p, actor):
        governance.revoke_use_case(request.path_params["id"], _required(p, "Reason"), actor=actor)
        return {"UseCaseId": request.path_params["id"], "Status": "revoked"}

    def create_key(request, p, actor):
        issued = governance.issue_key(use_case_id=p.get("UseCaseId"), organisation=p.get("Organisation"), actor=actor)
        return issued.to_json()

    def revoke_key(request, p, actor):
        governance.revoke_key(request.path_params["id"], _required(p, "Reason"), actor=actor)
        return {"AccessKeyId": request.path_params["id"], "Status": "revoked"}

    def list_policies(request, p, actor):
        states = governance.policy_states()
        return {
            "Templates": [
                {
                    "Template": name,
                    "Title": t.title,
                    "Active": bool(states.get(name) and states[name].active),
                    "Params": states[name].params if name in states else t.defaults,
                }
                for name, t in TEMPLATES.items()
                if not t.always_on
            ]
        }

    def activate(request, p, actor):
        state = governance.activate(
            request.path_params["template"], list(p.get("Settings", [])), _required(p, "Reason"), actor=actor
        )
        return {"Template": state.template, "Active": True, "Params": state.params}

    def deactivate(request, p, actor):
        governance.deactivate(request.path_params["template"], _required(p, "Reason"), actor=actor)
        return {"Template": request.path_params["template"], "Active": False}

    def checkpoint(request, p, actor):
        return governance.audit.checkpoint()

    return [
        route("/admin/organisations", create_org),
        route("/admin/organisations", list_orgs, methods=("GET",)),
        route("/admin/organisations/{name}/status", org_status),
        route("/admin/usecases", create_use_case),
        route("/admin/usecases/{id}/revoke", revoke_use_case),
        route("/admin/keys", create_key),
        route("/admin/keys/{id}/revoke", revoke_key),
        route("/admin/policies", list_policies, methods=("GET",)),
        route("/admin/policies/{template}/activate", activate),
        route("/admin/policies/{template}/deactivate", deactivate),
        route("/admin/audit/checkpoint", checkpoint),
    ]


def _required(payload: dict, member: str):
    value = payload.get(member)
    if value in (None, ""):
        raise InvalidParameterException(f"{member} is required.")
    return value


def _status(error: FacegateError) -> int:
    return {"AccessDeniedException": 403, "ResourceNotFoundException": 404, "UnrecognizedClientException": 403}.get(
        error.code, 400
    )
