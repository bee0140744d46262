"""Property-based fuzzing of the HTTP service: whatever arrives, the answer is an AWS error (or a result),
never a 500 with a traceback, and the server stays up."""

from __future__ import annotations

import base64
import json

import h11
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .test_http import server, signed_post  # noqa: F401 - the module-scoped server fixture

OPERATIONS = [
    "CreateCollection",
    "DescribeCollection",
    "ListCollections",
    "DeleteCollection",
    "IndexFaces",
    "ListFaces",
    "DeleteFaces",
    "SearchFaces",
    "SearchFacesByImage",
    "CompareFaces",
    "DetectFaces",
    "CreateUser",
    "ListUsers",
    "AssociateFaces",
    "SearchUsers",
    "TagResource",
    "ListTagsForResource",
]
CLIENT_ERRORS = {400, 404, 413}
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5),
    max_leaves=20,
)
member_names = st.sampled_from(
    [
        "CollectionId",
        "Image",
        "MaxFaces",
        "FaceIds",
        "FaceId",
        "UserId",
        "NextToken",
        "MaxResults",
        "QualityFilter",
        "FaceMatchThreshold",
        "ExternalImageId",
        "SourceImage",
        "TargetImage",
        "Tags",
        "ResourceArn",
    ]
) | st.text(max_size=12)


def assert_aws_answer(response: httpx.Response) -> None:
    assert response.status_code == 200 or response.status_code in CLIENT_ERRORS, response.text
    if response.status_code != 200:
        body = response.json()
        assert set(body) == {"__type", "Message"} and body["__type"] and "Traceback" not in body["Message"]


@FUZZ
@given(operation=st.sampled_from(OPERATIONS), body=st.binary(max_size=300))
def test_random_bytes_as_body(server, operation, body):  # noqa: F811
    assert_aws_answer(signed_post(server, f"RekognitionService.{operation}", body))


@FUZZ
@given(operation=st.sampled_from(OPERATIONS), body=st.dictionaries(member_names, json_values, max_size=6))
def test_random_json_members(server, operation, body):  # noqa: F811
    assert_aws_answer(signed_post(server, f"RekognitionService.{operation}", json.dumps(body).encode()))


@FUZZ
@given(
    headers=st.dictionaries(
        st.sampled_from(["Authorization", "X-Amz-Date", "X-Amz-Target", "Content-Type", "Content-Length", "Host"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=120),
        max_size=6,
    ),
    body=st.binary(max_size=100),
)
def test_random_headers(server, headers, body):  # noqa: F811
    try:
        response = httpx.post(server["endpoint"] + "/", content=body, headers=headers)
    except (httpx.LocalProtocolError, httpx.RemoteProtocolError, h11.LocalProtocolError):
        return  # the HTTP layer refused to send or parse it: nothing reached facegate
    assert_aws_answer(response)


@FUZZ
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8))
def test_damaged_real_images(server, people, cut, flips):  # noqa: F811
    data = bytearray(people["Tony_Blair"][0].read_bytes())
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    data = bytes(data[: max(1, int(cut * len(data)))])
    body = json.dumps({"Image": {"Bytes": base64.b64encode(data).decode()}}).encode()
    response = signed_post(server, "RekognitionService.DetectFaces", body)
    assert_aws_answer(response)
    if response.status_code != 200:
        assert response.json()["__type"] in {"InvalidImageFormatException", "InvalidParameterException"}


def test_still_healthy_after_fuzzing(server):  # noqa: F811
    assert httpx.get(server["endpoint"] + "/healthz").json()["status"] == "ok"
