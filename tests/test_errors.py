"""Errors keep their class, wire code, status, message and audited flag across a pickle and a process hop, and
a wire code names its class."""

from __future__ import annotations

import inspect
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from facegate import errors
from facegate.audit import AuditUnavailable
from facegate.errors import (
    FacegateError,
    InternalServerError,
    InvalidParameterException,
    RequestTimeoutException,
    ResourceNotFoundException,
    ThrottlingException,
    error_class,
)

WIRE_ERRORS = [
    cls
    for name, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, FacegateError) and cls is not FacegateError and not name.startswith("_")
]


# Every name the rest of facegate imports from facegate.errors, with its HTTP status.
STATUSES = {
    "AccessDeniedException": 400,
    "ConflictException": 400,
    "IdempotentParameterMismatchException": 400,
    "ImageTooLargeException": 400,
    "IncompleteSignatureException": 400,
    "InternalServerError": 500,
    "InvalidImageFormatException": 400,
    "InvalidPaginationTokenException": 400,
    "InvalidParameterException": 400,
    "InvalidS3ObjectException": 400,
    "InvalidSignatureException": 400,
    "LimitExceededException": 400,
    "RequestTimeoutException": 408,
    "ResourceAlreadyExistsException": 400,
    "ResourceNotFoundException": 400,
    "SerializationException": 400,
    "ServiceQuotaExceededException": 400,
    "ThrottlingException": 500,
    "UnknownOperationException": 400,
    "UnrecognizedClientException": 400,
    "ValidationException": 400,
    "VideoTooLargeException": 400,
}


def test_every_error_class_is_named_by_its_wire_code_with_its_status():
    assert {cls.__name__: cls.status for cls in WIRE_ERRORS} == STATUSES
    for cls in WIRE_ERRORS:
        assert cls.code == cls.__name__ and cls.__doc__, cls


@pytest.mark.parametrize("cls", [*WIRE_ERRORS, FacegateError, AuditUnavailable], ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("audited", [False, True])
def test_every_error_pickles_with_its_class_message_and_audited_flag(cls, audited):
    error = cls("collection 'family' was not found; create it first", audited=audited)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert (copy.code, copy.status, copy.message, copy.audited) == (cls.code, cls.status, error.message, audited)
    assert copy.to_wire() == error.to_wire() and str(copy) == str(error)


def _raise_not_found() -> None:
    raise ResourceNotFoundException("The collection id: family does not exist", audited=True)


def test_an_error_raised_in_another_process_arrives_with_its_class():
    with (
        ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
        pytest.raises(ResourceNotFoundException) as raised,
    ):
        pool.submit(_raise_not_found).result(timeout=120)
    assert raised.value.message == "The collection id: family does not exist" and raised.value.audited


def test_error_class_finds_each_class_by_its_code():
    assert error_class("ResourceNotFoundException") is ResourceNotFoundException
    assert error_class("ThrottlingException") is ThrottlingException
    assert error_class("RequestTimeoutException") is RequestTimeoutException
    # AuditUnavailable shares InternalServerError's code; the code names the generic class.
    assert error_class("InternalServerError") is InternalServerError
    for cls in WIRE_ERRORS:
        assert error_class(cls.code) is cls


def test_an_unknown_code_is_an_internal_server_error():
    """facegate raises only the codes it defines: one it does not know is the sender's fault, not the client's."""
    assert error_class("ProvisionedThroughputExceededException") is InternalServerError
    assert error_class("") is InternalServerError


def test_error_class_rebuilds_an_error_sent_as_values():
    sent = InvalidParameterException("MaxFaces must be between 1 and 4096; got 0")
    code, message = sent.code, sent.message
    rebuilt = error_class(code)(message)
    assert type(rebuilt) is InvalidParameterException and rebuilt.to_wire() == sent.to_wire()
