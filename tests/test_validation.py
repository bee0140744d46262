"""Request validation against botocore's Rekognition model: what passes, what fails and what AWS-style
message comes back."""

from __future__ import annotations

import base64
import re

import pytest

from facegate import validation
from facegate.errors import ImageTooLargeException, ValidationException
from facegate.validation import operation_names, validate_request

FACE_A = "11111111-2222-3333-4444-555555555555"
FACE_B = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
PNG_ISH = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def error_of(operation: str, params: object) -> str:
    with pytest.raises(ValidationException) as caught:
        validate_request(operation, params)  # type: ignore[arg-type]
    assert caught.value.code == "ValidationException"
    assert caught.value.status == 400
    return caught.value.message


def violations(message: str) -> list[str]:
    """The individual violations of an AWS-style message, checking that the stated count matches."""
    head, _, body = message.partition(" detected: ")
    count = int(head.split()[0])
    assert head == f"{count} validation error{'s' if count != 1 else ''}"
    parts = body.split("; ")
    assert len(parts) == count
    return parts


# -- the model -----------------------------------------------------------------------------------------


def test_operation_names_cover_the_face_api() -> None:
    names = operation_names()
    assert isinstance(names, frozenset)
    assert {"CreateCollection", "IndexFaces", "ListFaces", "SearchFacesByImage", "DeleteFaces"} <= names
    assert "indexFaces" not in names


def test_unknown_operation() -> None:
    with pytest.raises(ValidationException, match="^Operation Frobnicate is not part of the Rekognition API$"):
        validate_request("Frobnicate", {})


def _model_patterns() -> list[str]:
    shapes = validation._model()["shapes"]
    return sorted({shape["pattern"] for shape in shapes.values() if "pattern" in shape})


def test_every_model_pattern_compiles() -> None:
    patterns = _model_patterns()
    assert len(patterns) > 20
    raw_failures = []
    for pattern in patterns:
        assert isinstance(validation._compile_pattern(pattern), re.Pattern), pattern
        try:
            re.compile(pattern)
        except re.error:
            raw_failures.append(pattern)
    # Only Java's Unicode categories need translating; anything else Python rejects would be a new dialect
    # difference that _translate_pattern does not yet handle.
    assert all("\\p{" in pattern for pattern in raw_failures), raw_failures


def test_translated_patterns_follow_java() -> None:
    tag_key = validation._compile_pattern(r"^(?!aws:)[\p{L}\p{Z}\p{N}_.:/=+\-@]*$")
    assert tag_key.fullmatch("Équipe 2 ü:٣")  # letters, a space and digits from any script
    assert tag_key.fullmatch("\u3000")  # an ideographic space is in Z
    assert not tag_key.fullmatch("aws:owner")
    assert not tag_key.fullmatch("a\tb")  # tab is a control character, not Z
    assert not tag_key.fullmatch("a!")
    # Java's \d is ASCII; its '.' stops at \r as well as \n.
    assert not validation._compile_pattern(r"^[0-9]+$|\d+").fullmatch("٣")
    assert not validation._compile_pattern(".{1,}").fullmatch("a\rb")
    assert validation._compile_pattern(".{1,}").fullmatch("a b")


# -- valid requests ------------------------------------------------------------------------------------


def test_create_collection_valid() -> None:
    params = {"CollectionId": "my_collection-1.0", "Tags": {"team": "Café Ü 1", "env": ""}}
    assert validate_request("CreateCollection", params) == params


def test_index_faces_base64_string_becomes_bytes() -> None:
    params = {
        "CollectionId": "c1",
        "Image": {"Bytes": b64(PNG_ISH)},
        "ExternalImageId": "photo:1",
        "DetectionAttributes": ["DEFAULT"],
        "MaxFaces": 5,
        "QualityFilter": "AUTO",
    }
    result = validate_request("IndexFaces", params)
    assert result["Image"]["Bytes"] == PNG_ISH
    assert isinstance(result["Image"]["Bytes"], bytes)
    assert params["Image"]["Bytes"] == b64(PNG_ISH)  # the caller's dict is left alone
    assert {k: v for k, v in result.items() if k != "Image"} == {k: v for k, v in params.items() if k != "Image"}


def test_index_faces_raw_bytes_accepted() -> None:
    result = validate_request("IndexFaces", {"CollectionId": "c1", "Image": {"Bytes": bytearray(PNG_ISH)}})
    assert result["Image"]["Bytes"] == PNG_ISH
    assert type(result["Image"]["Bytes"]) is bytes


def test_index_faces_s3_object_valid() -> None:
    params = {"CollectionId": "c1", "Image": {"S3Object": {"Bucket": "my-bucket", "Name": "a/b.jpg"}}}
    assert validate_request("IndexFaces", params) == params


def test_list_faces_valid() -> None:
    params = {"CollectionId": "c1", "MaxResults": 0, "NextToken": "abc", "FaceIds": [FACE_A, FACE_B]}
    assert validate_request("ListFaces", params) == params


def test_search_faces_by_image_valid_and_float_normalised() -> None:
    params = {"CollectionId": "c1", "Image": {"Bytes": PNG_ISH}, "MaxFaces": 4096, "FaceMatchThreshold": 80}
    result = validate_request("SearchFacesByImage", params)
    assert result["FaceMatchThreshold"] == 80.0
    assert type(result["FaceMatchThreshold"]) is float
    assert result["MaxFaces"] == 4096


def test_null_optional_member_is_dropped() -> None:
    assert validate_request("ListFaces", {"CollectionId": "c1", "NextToken": None}) == {"CollectionId": "c1"}


# -- constraint violations -----------------------------------------------------------------------------


def test_bad_pattern() -> None:
    assert error_of("CreateCollection", {"CollectionId": "a b"}) == (
        "1 validation error detected: Value 'a b' at 'collectionId' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: [a-zA-Z0-9_.\\-]+"
    )


def test_too_long_and_value_truncated() -> None:
    message = error_of("CreateCollection", {"CollectionId": "x" * 256})
    assert message == (
        f"1 validation error detected: Value '{'x' * 64}...' at 'collectionId' failed to satisfy constraint: "
        "Member must have length less than or equal to 255"
    )
    validate_request("CreateCollection", {"CollectionId": "x" * 255})


def test_empty_string_breaks_length_and_pattern() -> None:
    assert violations(error_of("CreateCollection", {"CollectionId": ""})) == [
        "Value '' at 'collectionId' failed to satisfy constraint: Member must have length greater than or equal to 1",
        "Value '' at 'collectionId' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: [a-zA-Z0-9_.\\-]+",
    ]


@pytest.mark.parametrize(
    ("max_faces", "constraint"),
    [
        (0, "Member must have value greater than or equal to 1"),
        (4097, "Member must have value less than or equal to 4096"),
    ],
)
def test_max_faces_out_of_range(max_faces: int, constraint: str) -> None:
    params = {"CollectionId": "c1", "Image": {"Bytes": PNG_ISH}, "MaxFaces": max_faces}
    assert error_of("SearchFacesByImage", params) == (
        f"1 validation error detected: Value '{max_faces}' at 'maxFaces' failed to satisfy constraint: " + constraint
    )


def test_float_out_of_range() -> None:
    params = {"CollectionId": "c1", "Image": {"Bytes": PNG_ISH}, "FaceMatchThreshold": 100.5}
    assert violations(error_of("SearchFacesByImage", params)) == [
        "Value '100.5' at 'faceMatchThreshold' failed to satisfy constraint: "
        "Member must have value less than or equal to 100"
    ]


def test_enum_violation() -> None:
    params = {"CollectionId": "c1", "Image": {"Bytes": PNG_ISH}, "QualityFilter": "BEST"}
    assert error_of("IndexFaces", params) == (
        "1 validation error detected: Value 'BEST' at 'qualityFilter' failed to satisfy constraint: "
        "Member must satisfy enum value set: [NONE, AUTO, LOW, MEDIUM, HIGH]"
    )


def test_missing_required() -> None:
    assert error_of("IndexFaces", {"CollectionId": "c1"}) == (
        "1 validation error detected: Value null at 'image' failed to satisfy constraint: Member must not be null"
    )
    assert violations(error_of("IndexFaces", {"Image": None})) == [
        "Value null at 'collectionId' failed to satisfy constraint: Member must not be null",
        "Value null at 'image' failed to satisfy constraint: Member must not be null",
    ]


def test_unknown_member_top_level_and_nested() -> None:
    params = {"CollectionId": "c1", "Colour": "red", "Image": {"Bytes": PNG_ISH, "Url": "http://x"}}
    assert violations(error_of("IndexFaces", params)) == [
        "Unexpected member 'Url' at 'image': accepted members are Bytes, S3Object",
        "Unexpected member 'Colour': accepted members are CollectionId, Image, ExternalImageId, "
        "DetectionAttributes, MaxFaces, QualityFilter",
    ]


def test_member_names_are_case_sensitive() -> None:
    message = error_of("ListFaces", {"collectionId": "c1"})
    assert violations(message) == [
        "Value null at 'collectionId' failed to satisfy constraint: Member must not be null",
        "Unexpected member 'collectionId': accepted members are CollectionId, NextToken, MaxResults, UserId, FaceIds",
    ]


# -- wrong JSON types ----------------------------------------------------------------------------------


def test_string_for_integer() -> None:
    params = {"CollectionId": "c1", "MaxResults": "10"}
    assert error_of("ListFaces", params) == (
        "1 validation error detected: Value '10' at 'maxResults' failed to satisfy constraint: "
        "Member must be of type integer (received string)"
    )


def test_bool_is_not_an_integer() -> None:
    message = error_of("ListFaces", {"CollectionId": "c1", "MaxResults": True})
    assert "at 'maxResults'" in message
    assert "Member must be of type integer (received boolean)" in message


def test_float_is_not_an_integer() -> None:
    message = error_of("ListFaces", {"CollectionId": "c1", "MaxResults": 10.0})
    assert "Member must be of type integer (received number)" in message


def test_integer_beyond_32_bits() -> None:
    message = error_of("ListFaces", {"CollectionId": "c1", "MaxResults": 2**31})
    assert "at 'maxResults' failed to satisfy constraint: Member must be a 32-bit integer" in message


def test_list_for_structure() -> None:
    assert error_of("IndexFaces", {"CollectionId": "c1", "Image": ["abc"]}) == (
        "1 validation error detected: Value '[abc]' at 'image' failed to satisfy constraint: "
        "Member must be of type object (received array)"
    )


def test_other_wrong_types() -> None:
    parts = violations(error_of("ListFaces", {"CollectionId": 7, "FaceIds": FACE_A, "NextToken": {"a": 1}}))
    assert parts == [
        "Value '7' at 'collectionId' failed to satisfy constraint: Member must be of type string (received integer)",
        "Value '{a=1}' at 'nextToken' failed to satisfy constraint: Member must be of type string (received object)",
        f"Value '{FACE_A}' at 'faceIds' failed to satisfy constraint: Member must be of type array (received string)",
    ]


def test_body_must_be_an_object() -> None:
    assert error_of("ListFaces", ["CollectionId"]) == (
        "1 validation error detected: The request body must be a JSON object (received array)"
    )


def test_map_with_non_string_value() -> None:
    message = error_of("CreateCollection", {"CollectionId": "c1", "Tags": {"team": 5}})
    assert "Value '5' at 'tags.team' failed to satisfy constraint: Member must be of type string" in message


# -- blobs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["not base64!", "abc", "YWJj\nZGVm", "YWJjZA=", "é"])
def test_invalid_base64(bad: str) -> None:
    assert error_of("IndexFaces", {"CollectionId": "c1", "Image": {"Bytes": bad}}) == (
        "1 validation error detected: Value at 'image.bytes' failed to satisfy constraint: "
        "Member must be a valid base64-encoded string"
    )


@pytest.mark.parametrize("empty", ["", b""])
def test_empty_blob(empty: str | bytes) -> None:
    assert error_of("IndexFaces", {"CollectionId": "c1", "Image": {"Bytes": empty}}) == (
        "1 validation error detected: Value at 'image.bytes' failed to satisfy constraint: "
        "Member must have length greater than or equal to 1"
    )


def test_blob_of_wrong_type_is_not_echoed() -> None:
    message = error_of("IndexFaces", {"CollectionId": "c1", "Image": {"Bytes": 123456789}})
    assert message == (
        "1 validation error detected: Value at 'image.bytes' failed to satisfy constraint: "
        "Member must be of type base64-encoded string (received integer)"
    )


def test_five_megabyte_image_is_accepted_and_decoded() -> None:
    image = bytes(range(256)) * (5 * 1024 * 1024 // 256)  # exactly ImageBlob's max
    result = validate_request("IndexFaces", {"CollectionId": "c1", "Image": {"Bytes": b64(image)}})
    assert result["Image"]["Bytes"] == image


@pytest.mark.parametrize("as_text", [True, False])
def test_blob_over_max_is_image_too_large_without_echo(as_text: bool) -> None:
    image = b"\xff" * (5 * 1024 * 1024 + 1)
    with pytest.raises(ImageTooLargeException) as info:
        validate_request("IndexFaces", {"CollectionId": "c1", "Image": {"Bytes": b64(image) if as_text else image}})
    assert "the limit is 5,242,880 bytes" in info.value.message and "\xff" not in info.value.message


# -- several violations, lists and maps ----------------------------------------------------------------


def test_multiple_violations_counted() -> None:
    params = {
        "CollectionId": "a b",
        "Image": {"Bytes": ""},
        "MaxFaces": 0,
        "QualityFilter": "best",
        "DetectionAttributes": ["SMIRK"],
    }
    parts = violations(error_of("IndexFaces", params))
    assert len(parts) == 5
    assert parts[0].startswith("Value 'a b' at 'collectionId'")
    assert parts[1].startswith("Value at 'image.bytes'")
    assert parts[2].startswith("Value 'SMIRK' at 'detectionAttributes.1'")
    assert parts[3].startswith("Value '0' at 'maxFaces'")
    assert parts[4].startswith("Value 'best' at 'qualityFilter'")


def test_list_item_path_is_one_based() -> None:
    assert error_of("DeleteFaces", {"CollectionId": "c1", "FaceIds": [FACE_A, "not-a-face", FACE_B]}) == (
        "1 validation error detected: Value 'not-a-face' at 'faceIds.2' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: "
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    )


def test_list_length_and_null_item() -> None:
    assert violations(error_of("DeleteFaces", {"CollectionId": "c1", "FaceIds": []})) == [
        "Value '[]' at 'faceIds' failed to satisfy constraint: Member must have length greater than or equal to 1"
    ]
    message = error_of("DeleteFaces", {"CollectionId": "c1", "FaceIds": [FACE_A, None]})
    assert violations(message) == ["Value null at 'faceIds.2' failed to satisfy constraint: Member must not be null"]


def test_map_key_and_value_constraints_fold_into_the_map() -> None:
    params = {"CollectionId": "c1", "Tags": {"aws:owner": "me", "ok": "tab\there"}}
    assert violations(error_of("CreateCollection", params)) == [
        "Value '{aws:owner=me, ok=tab\there}' at 'tags' failed to satisfy constraint: Map keys must satisfy "
        "constraint: [Member must satisfy regular expression pattern: "
        "^(?!aws:)[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*$]",
        "Value '{aws:owner=me, ok=tab\there}' at 'tags' failed to satisfy constraint: Map value must satisfy "
        "constraint: [Member must satisfy regular expression pattern: ^([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)$]",
    ]


def test_reported_violations_are_capped_but_counted() -> None:
    message = error_of("DeleteFaces", {"CollectionId": "c1", "FaceIds": ["x"] * 300})
    assert message.startswith("300 validation errors detected: Value 'x' at 'faceIds.1' ")
    assert message.endswith("; and 200 more")
    assert "faceIds.100'" in message
    assert "faceIds.101'" not in message


def test_unbounded_pattern_skips_huge_values() -> None:
    # SNSTopicArn has a pattern but no max; a huge value is refused without running the regex.
    message = error_of(
        "StartFaceDetection",
        {
            "Video": {"S3Object": {"Bucket": "bkt", "Name": "v.mp4"}},
            "NotificationChannel": {
                "SNSTopicArn": "arn:aws:sns:" + ":aaaaaaaaaaaa:" * 20000 + "\n",
                "RoleArn": "arn:aws:iam::123456789012:role/r",
            },
        },
    )
    assert "at 'notificationChannel.sNSTopicArn' failed to satisfy constraint: Member must satisfy" in message


def test_oversized_base64_text_is_refused_before_decoding() -> None:
    # Far more characters than any encoding of 5 MiB needs: refused as too large without being decoded.
    with pytest.raises(ImageTooLargeException, match="at least"):
        validate_request("IndexFaces", {"CollectionId": "c1", "Image": {"Bytes": "!" * 7_000_000}})
