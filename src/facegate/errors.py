"""Errors that carry their Rekognition wire code, so every layer can raise them and the wire layer,
the CLI and the Python API report them the same way.

An error survives a process hop: it pickles with its class, message and ``audited`` flag, and
:func:`error_class` turns a wire code back into its class."""

from __future__ import annotations

from typing import Any


class FacegateError(Exception):
    """An error a client can act on. ``code`` is the Rekognition ``__type``; ``status`` the HTTP status."""

    code = "InternalServerError"
    status = 500

    def __init__(self, message: str, *, audited: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.audited = audited  # already written to the audit log by whoever raised it

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own reduce rebuilds from ``args`` only; keyword-only ``audited`` rides in the state.
        return type(self), (self.message,), self.__dict__.copy()

    def to_wire(self) -> dict[str, str]:
        return {"__type": self.code, "Message": self.message}


class _ClientError(FacegateError):
    status = 400


class InvalidParameterException(_ClientError):
    """Rekognition's InvalidParameterException."""

    code = "InvalidParameterException"


class InvalidImageFormatException(_ClientError):
    """Rekognition's InvalidImageFormatException."""

    code = "InvalidImageFormatException"


class ImageTooLargeException(_ClientError):
    """Rekognition's ImageTooLargeException."""

    code = "ImageTooLargeException"


class InvalidS3ObjectException(_ClientError):
    """Rekognition's InvalidS3ObjectException."""

    code = "InvalidS3ObjectException"


class VideoTooLargeException(_ClientError):
    """Rekognition's VideoTooLargeException."""

    code = "VideoTooLargeException"


class LimitExceededException(_ClientError):
    """Rekognition's LimitExceededException: too many jobs in progress."""

    code = "LimitExceededException"


class ResourceNotFoundException(_ClientError):
    """Rekognition's ResourceNotFoundException."""

    code = "ResourceNotFoundException"


class ResourceAlreadyExistsException(_ClientError):
    """Rekognition's ResourceAlreadyExistsException."""

    code = "ResourceAlreadyExistsException"


class InvalidPaginationTokenException(_ClientError):
    """Rekognition's InvalidPaginationTokenException."""

    code = "InvalidPaginationTokenException"


class IdempotentParameterMismatchException(_ClientError):
    """Rekognition's IdempotentParameterMismatchException."""

    code = "IdempotentParameterMismatchException"


class ConflictException(_ClientError):
    """Rekognition's ConflictException."""

    code = "ConflictException"


class ServiceQuotaExceededException(_ClientError):
    """Rekognition's ServiceQuotaExceededException."""

    code = "ServiceQuotaExceededException"


class AccessDeniedException(_ClientError):
    """Rekognition's AccessDeniedException."""

    code = "AccessDeniedException"


class ValidationException(_ClientError):
    """Rekognition's ValidationException."""

    # AWS's request framework answers constraint violations (pattern, length, range, type) with this code.
    code = "ValidationException"


class ThrottlingException(FacegateError):
    """Rekognition's ThrottlingException: too many requests at once; the client may retry later."""

    code = "ThrottlingException"
    status = 500


class RequestTimeoutException(FacegateError):
    """The client did not send its request within the server's deadline."""

    code = "RequestTimeoutException"
    status = 408


class InternalServerError(FacegateError):
    """Rekognition's InternalServerError: a fault on facegate's side, not in the request."""

    code = "InternalServerError"
    status = 500


# Authentication and protocol errors, named and coded as AWS's front end answers them.


class UnrecognizedClientException(_ClientError):
    """Rekognition's UnrecognizedClientException."""

    code = "UnrecognizedClientException"


class InvalidSignatureException(_ClientError):
    """Rekognition's InvalidSignatureException."""

    code = "InvalidSignatureException"


class IncompleteSignatureException(_ClientError):
    """Rekognition's IncompleteSignatureException."""

    code = "IncompleteSignatureException"


class UnknownOperationException(_ClientError):
    """Rekognition's UnknownOperationException."""

    code = "UnknownOperationException"


class SerializationException(_ClientError):
    """Rekognition's SerializationException."""

    code = "SerializationException"


def _wire_classes() -> dict[str, type[FacegateError]]:
    """Each public error class of this module by its code. Errors defined elsewhere (such as the audit log's
    ``AuditUnavailable``) reuse one of these codes, so they are left out: a code names exactly one class."""
    found: dict[str, type[FacegateError]] = {}
    pending = list(FacegateError.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__ != __name__ or cls.__name__.startswith("_"):
            continue
        if found.setdefault(cls.code, cls) is not cls:
            raise TypeError(f"{cls.__name__} and {found[cls.code].__name__} share the code {cls.code}")
    return found


_BY_CODE = _wire_classes()


def error_class(code: str) -> type[FacegateError]:
    """The error class whose wire code (``__type``) is ``code``, as a receiver rebuilds an error sent as values.

    An unknown code gives :class:`InternalServerError`: facegate raises only the codes defined here, so one it
    does not know is a fault on the sending side (or a newer facegate), never something the client did."""
    return _BY_CODE.get(code, InternalServerError)
