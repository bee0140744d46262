"""Server-side AWS Signature Version 4 verification against facegate's keys.

The expected signature is recomputed with botocore's own signer from what was received (method, path, query,
the signed headers, body, X-Amz-Date), so canonicalisation matches every AWS SDK's exactly.
"""

from __future__ import annotations

import datetime
import hmac
import re
from collections.abc import Mapping

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from facegate.errors import IncompleteSignatureException, InvalidSignatureException, UnrecognizedClientException
from facegate.keys import KeyRing, Principal

SERVICE = "rekognition"
DEFAULT_REGIONS = ("us-east-1",)
# Headers that change what a request means: each one present must be covered by the signature, or a request
# signed for one operation (or policy context) could be replayed as another.
REQUIRED_SIGNED = ("host", "x-amz-date")
SIGNED_PREFIXES = ("x-amz-", "x-facegate-")
MAX_SKEW = datetime.timedelta(minutes=5)
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*SignedHeaders=(?P<signed>[^,\s]+)\s*,"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)


def verify(
    keys: KeyRing,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime.datetime | None = None,
    service: str = SERVICE,
    regions: tuple[str, ...] = DEFAULT_REGIONS,
) -> Principal:
    """The principal whose key signed this request, or the AWS error that explains why it is refused.

    ``headers`` must be case-insensitive (Starlette's are). The credential scope must name one of ``regions``;
    ``host``, ``x-amz-date`` and every ``x-amz-*`` / ``x-facegate-*`` header present (``x-amz-target``, which
    names the operation, among them) must be signed.
    """
    authorization = headers.get("authorization")
    if not authorization:
        raise IncompleteSignatureException("Request is missing the Authorization header: sign it with SigV4.")
    match = _AUTH.match(authorization.strip())
    if not match:
        raise IncompleteSignatureException(
            "Authorization header is not 'AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...'."
        )
    parts = match["credential"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise IncompleteSignatureException(
            "Credential must be KEY/YYYYMMDD/REGION/SERVICE/aws4_request, got " + match["credential"][:120]
        )
    access_key_id, scope_date, region, scope_service, _ = parts
    if scope_service != service:
        raise InvalidSignatureException(f"Credential should be scoped to correct service: '{service}'.")
    if region not in regions:
        raise InvalidSignatureException(
            f"Credential should be scoped to a valid region, not '{region[:40]}'. "
            f"This endpoint serves: {', '.join(regions)}."
        )
    amz_date = headers.get("x-amz-date")
    if not amz_date:
        raise IncompleteSignatureException("Request is missing the X-Amz-Date header.")
    try:
        signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        raise IncompleteSignatureException(
            f"X-Amz-Date {amz_date[:40]!r} is not in the form YYYYMMDDTHHMMSSZ."
        ) from None
    if scope_date != amz_date[:8]:
        raise InvalidSignatureException(f"Credential date {scope_date} does not match X-Amz-Date {amz_date}.")
    now = now or datetime.datetime.now(datetime.UTC)
    if abs(now - signed_at) > MAX_SKEW:
        raise InvalidSignatureException(
            f"Signature expired: {amz_date} is not within 5 minutes of the server time "
            f"{now.strftime('%Y%m%dT%H%M%SZ')}."
        )
    signed = match["signed"].split(";")
    for required in REQUIRED_SIGNED:
        if required not in signed:
            raise IncompleteSignatureException(f"SignedHeaders must include {required}.")
    unsigned = sorted({name.lower() for name in headers if name.lower().startswith(SIGNED_PREFIXES)} - set(signed))
    if unsigned:
        raise IncompleteSignatureException(
            f"Header(s) {', '.join(h[:60] for h in unsigned[:5])} must be signed: add them to SignedHeaders."
        )
    missing = [name for name in signed if name not in headers]
    if missing:
        raise IncompleteSignatureException(f"Signed header(s) missing from the request: {', '.join(missing)}.")

    found = keys.secret_for(access_key_id)
    if found is None:
        raise UnrecognizedClientException("The security token included in the request is invalid.")
    principal, secret = found

    url = f"http://{headers['host']}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers={name: headers[name] for name in signed})
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(access_key_id, secret), service, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, match["signature"]):
        raise InvalidSignatureException(
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method."
        )
    return principal
