"""Errors that carry their Rekognition wire code, so every layer can raise them and the wire layer,
the CLI and the Python API report them the same way."""

from __future__ import annotations


class FacegateError(Exception):
    """An error a client can act on. ``code`` is the Rekognition ``__type``; ``status`` the HTTP status."""

    code = "InternalServerError"
    status = 500

    def __init__(self, message: str, *, audited: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.audited = audited  # already written to the audit log by whoever raised it

    def to_wire(self) -> dict[str, str]:
        return {"__type": self.code, "Message": self.message}


class _ClientError(FacegateError):
    status = 400


def _client_error(code: str) -> type[FacegateError]:
    return type(code, (_ClientError,), {"code": code, "__doc__": f"Rekognition's {code}."})


InvalidParameterException = _client_error("InvalidParameterException")
InvalidImageFormatException = _client_error("InvalidImageFormatException")
ImageTooLargeException = _client_error("ImageTooLargeException")
InvalidS3ObjectException = _client_error("InvalidS3ObjectException")
ResourceNotFoundException = _client_error("ResourceNotFoundException")
ResourceAlreadyExistsException = _client_error("ResourceAlreadyExistsException")
InvalidPaginationTokenException = _client_error("InvalidPaginationTokenException")
IdempotentParameterMismatchException = _client_error("IdempotentParameterMismatchException")
ConflictException = _client_error("ConflictException")
ServiceQuotaExceededException = _client_error("ServiceQuotaExceededException")
AccessDeniedException = _client_error("AccessDeniedException")
# AWS's request framework answers constraint violations (pattern, length, range, type) with this code.
ValidationException = _client_error("ValidationException")


class ThrottlingException(FacegateError):
    code = "ThrottlingException"
    status = 500


class RequestTimeoutException(FacegateError):
    """The client did not send its request within the server's deadline."""

    code = "RequestTimeoutException"
    status = 408


class InternalServerError(FacegateError):
    code = "InternalServerError"
    status = 500


# Authentication and protocol errors, named and coded as AWS's front end answers them.
UnrecognizedClientException = _client_error("UnrecognizedClientException")
InvalidSignatureException = _client_error("InvalidSignatureException")
IncompleteSignatureException = _client_error("IncompleteSignatureException")
UnknownOperationException = _client_error("UnknownOperationException")
SerializationException = _client_error("SerializationException")
