"""Every service operation with Rekognition's semantics, on real faces."""

from __future__ import annotations

import numpy as np
import pytest

from facegate.errors import (
    ConflictException,
    FacegateError,
    IdempotentParameterMismatchException,
    InvalidPaginationTokenException,
    InvalidParameterException,
    InvalidS3ObjectException,
    ResourceAlreadyExistsException,
    ResourceNotFoundException,
    ValidationException,
)
from facegate.wire import to_wire

from .conftest import OWNER, image_of

OTHER = "org-b"


def call(service, owner: str, operation: str, params: dict) -> dict:
    """The operation's answer as Rekognition's response, exactly as the HTTP API sends it."""
    return to_wire(operation, service.call(owner, operation, params))


def index(service, collection, path, external=None, **extra):
    params = {"CollectionId": collection, "Image": image_of(path), **extra}
    if external:
        params["ExternalImageId"] = external
    return call(service, OWNER, "IndexFaces", params)


@pytest.fixture
def gallery(service, people):
    """A collection with three photos of each of four people; the fourth photo of each is kept as a probe."""
    call(service, OWNER, "CreateCollection", {"CollectionId": "gallery"})
    ids: dict[str, list[str]] = {}
    for name, photos in people.items():
        for i, path in enumerate(photos[:3]):
            response = index(service, "gallery", path, f"{name}-{i}")
            ids.setdefault(name, []).extend(r["Face"]["FaceId"] for r in response["FaceRecords"])
    return ids


def test_collection_lifecycle(service):
    created = call(service, OWNER, "CreateCollection", {"CollectionId": "c1", "Tags": {"team": "a"}})
    assert created["StatusCode"] == 200
    assert created["CollectionArn"] == f"aws:rekognition:us-east-1:{OWNER}:collection/c1"
    assert created["FaceModelVersion"] == service.engine.model_version
    with pytest.raises(ResourceAlreadyExistsException):
        call(service, OWNER, "CreateCollection", {"CollectionId": "c1"})
    described = call(service, OWNER, "DescribeCollection", {"CollectionId": "c1"})
    assert described["FaceCount"] == 0 and described["UserCount"] == 0
    assert described["CollectionARN"] == created["CollectionArn"]
    assert call(service, OWNER, "ListCollections", {})["CollectionIds"] == ["c1"]
    assert call(service, OWNER, "DeleteCollection", {"CollectionId": "c1"}) == {"StatusCode": 200}
    with pytest.raises(ResourceNotFoundException):
        call(service, OWNER, "DescribeCollection", {"CollectionId": "c1"})


def test_owners_never_see_each_others_collections(service, people):
    call(service, OWNER, "CreateCollection", {"CollectionId": "shared-name"})
    index(service, "shared-name", people["Tony_Blair"][0], "tb")
    # The other owner sees nothing, can create the same id independently, and cannot reach ours by ARN.
    assert call(service, OTHER, "ListCollections", {})["CollectionIds"] == []
    for operation, params in [
        ("DescribeCollection", {"CollectionId": "shared-name"}),
        ("ListFaces", {"CollectionId": "shared-name"}),
        ("SearchFacesByImage", {"CollectionId": "shared-name", "Image": image_of(people["Tony_Blair"][1])}),
        ("DeleteCollection", {"CollectionId": "shared-name"}),
        ("ListTagsForResource", {"ResourceArn": f"aws:rekognition:us-east-1:{OWNER}:collection/shared-name"}),
    ]:
        with pytest.raises(ResourceNotFoundException):
            call(service, OTHER, operation, params)
    call(service, OTHER, "CreateCollection", {"CollectionId": "shared-name"})
    assert call(service, OTHER, "DescribeCollection", {"CollectionId": "shared-name"})["FaceCount"] == 0
    assert call(service, OWNER, "DescribeCollection", {"CollectionId": "shared-name"})["FaceCount"] == 1


def test_index_faces_response_shape(service, people):
    call(service, OWNER, "CreateCollection", {"CollectionId": "c"})
    response = index(service, "c", people["Colin_Powell"][0], "colin.jpg")
    assert response["FaceModelVersion"] == service.engine.model_version
    (record,) = response["FaceRecords"]
    face, detail = record["Face"], record["FaceDetail"]
    assert face["ExternalImageId"] == "colin.jpg"
    assert len(face["FaceId"]) == 36 and face["FaceId"] == face["FaceId"].lower()
    assert 0 < face["BoundingBox"]["Width"] <= 1 and 0 <= face["BoundingBox"]["Left"] < 1
    assert face["Confidence"] > 90
    assert {lm["Type"] for lm in detail["Landmarks"]} >= {"eyeLeft", "eyeRight", "nose", "mouthLeft", "chinBottom"}
    assert set(detail["Pose"]) == {"Roll", "Yaw", "Pitch"}
    assert 0 <= detail["Quality"]["Brightness"] <= 100 and 0 <= detail["Quality"]["Sharpness"] <= 100
    assert response["UnindexedFaces"] == []


def test_index_same_image_twice_stores_no_duplicates(service, people):
    call(service, OWNER, "CreateCollection", {"CollectionId": "c"})
    first = index(service, "c", people["Colin_Powell"][0], "colin")
    again = index(service, "c", people["Colin_Powell"][0], "colin")
    assert [r["Face"]["FaceId"] for r in again["FaceRecords"]] == [r["Face"]["FaceId"] for r in first["FaceRecords"]]
    assert call(service, OWNER, "DescribeCollection", {"CollectionId": "c"})["FaceCount"] == 1
    # Another ExternalImageId for the same bytes is a separate indexing, as in Rekognition.
    index(service, "c", people["Colin_Powell"][0], "colin-copy")
    assert call(service, OWNER, "DescribeCollection", {"CollectionId": "c"})["FaceCount"] == 2


def test_index_multi_face_image_max_faces_and_quality_filter(service, group_photo):
    call(service, OWNER, "CreateCollection", {"CollectionId": "c"})
    params = {"CollectionId": "c", "Image": {"Bytes": group_photo}, "MaxFaces": 2}
    response = call(service, OWNER, "IndexFaces", params)
    assert len(response["FaceRecords"]) == 2
    reasons = [u["Reasons"] for u in response["UnindexedFaces"]]
    assert len(reasons) == 4 and all(r == ["EXCEEDS_MAX_FACES"] for r in reasons)
    # The two indexed are the largest ones.
    indexed = [r["Face"]["BoundingBox"]["Width"] * r["Face"]["BoundingBox"]["Height"] for r in response["FaceRecords"]]
    skipped = [
        u["FaceDetail"]["BoundingBox"]["Width"] * u["FaceDetail"]["BoundingBox"]["Height"]
        for u in response["UnindexedFaces"]
    ]
    assert min(indexed) >= max(skipped)


def test_quality_filter_high_rejects_a_blurred_face(service, people):
    import io

    from PIL import Image, ImageFilter

    call(service, OWNER, "CreateCollection", {"CollectionId": "c"})
    blurred = io.BytesIO()
    Image.open(people["Tony_Blair"][0]).filter(ImageFilter.GaussianBlur(3)).save(blurred, "PNG")
    response = call(
        service,
        OWNER,
        "IndexFaces",
        {"CollectionId": "c", "Image": {"Bytes": blurred.getvalue()}, "QualityFilter": "HIGH"},
    )
    assert response["FaceRecords"] == []
    assert "LOW_SHARPNESS" in response["UnindexedFaces"][0]["Reasons"]
    kept = call(
        service,
        OWNER,
        "IndexFaces",
        {"CollectionId": "c", "Image": {"Bytes": blurred.getvalue()}, "QualityFilter": "NONE"},
    )
    assert len(kept["FaceRecords"]) == 1


def test_search_faces_by_image_finds_the_same_person_first(service, people, gallery):
    for name, photos in people.items():
        response = call(
            service,
            OWNER,
            "SearchFacesByImage",
            {"CollectionId": "gallery", "Image": image_of(photos[3]), "MaxFaces": 3},
        )
        assert response["FaceMatches"], f"no match for {name}"
        best = response["FaceMatches"][0]
        assert best["Face"]["ExternalImageId"].startswith(name)
        assert best["Similarity"] >= 80
        similarities = [m["Similarity"] for m in response["FaceMatches"]]
        assert similarities == sorted(similarities, reverse=True)
        assert response["SearchedFaceConfidence"] > 50 and "Width" in response["SearchedFaceBoundingBox"]


def test_search_threshold_and_max_faces(service, people, gallery):
    probe = image_of(people["George_W_Bush"][3])
    everyone = call(
        service,
        OWNER,
        "SearchFacesByImage",
        {"CollectionId": "gallery", "Image": probe, "FaceMatchThreshold": 0, "MaxFaces": 50},
    )
    assert len(everyone["FaceMatches"]) == 12  # threshold 0 admits every face
    strict = call(
        service, OWNER, "SearchFacesByImage", {"CollectionId": "gallery", "Image": probe, "FaceMatchThreshold": 99}
    )
    assert all(m["Similarity"] >= 99 for m in strict["FaceMatches"])
    assert all(m["Face"]["ExternalImageId"].startswith("George_W_Bush") for m in strict["FaceMatches"])
    one = call(service, OWNER, "SearchFacesByImage", {"CollectionId": "gallery", "Image": probe, "MaxFaces": 1})
    assert len(one["FaceMatches"]) == 1


def test_search_faces_by_face_id_excludes_the_probe(service, gallery):
    probe = gallery["Serena_Williams"][0]
    response = call(service, OWNER, "SearchFaces", {"CollectionId": "gallery", "FaceId": probe})
    assert response["SearchedFaceId"] == probe
    ids = [m["Face"]["FaceId"] for m in response["FaceMatches"]]
    assert probe not in ids
    assert set(gallery["Serena_Williams"][1:]) <= set(ids)
    with pytest.raises(ResourceNotFoundException):
        call(
            service, OWNER, "SearchFaces", {"CollectionId": "gallery", "FaceId": "00000000-0000-0000-0000-000000000000"}
        )


def test_search_with_no_face_in_the_image(service, gallery):
    import io

    from PIL import Image

    blank = io.BytesIO()
    Image.new("RGB", (200, 200), (120, 130, 140)).save(blank, "PNG")
    with pytest.raises(InvalidParameterException, match="no faces"):
        call(service, OWNER, "SearchFacesByImage", {"CollectionId": "gallery", "Image": {"Bytes": blank.getvalue()}})


def test_deleted_faces_disappear_from_search(service, people, gallery):
    bush = gallery["George_W_Bush"]
    response = call(
        service,
        OWNER,
        "DeleteFaces",
        {"CollectionId": "gallery", "FaceIds": [*bush, "11111111-1111-1111-1111-111111111111"]},
    )
    assert sorted(response["DeletedFaces"]) == sorted(bush)
    assert response["UnsuccessfulFaceDeletions"] == [
        {"FaceId": "11111111-1111-1111-1111-111111111111", "Reasons": ["FACE_NOT_FOUND"]}
    ]
    matches = call(
        service, OWNER, "SearchFacesByImage", {"CollectionId": "gallery", "Image": image_of(people["George_W_Bush"][3])}
    )["FaceMatches"]
    assert not any(m["Face"]["FaceId"] in bush for m in matches)


def test_list_faces_pagination(service, gallery):
    all_ids = sorted(i for ids in gallery.values() for i in ids)
    seen, token, pages = [], None, 0
    while True:
        params = {"CollectionId": "gallery", "MaxResults": 5}
        if token:
            params["NextToken"] = token
        page = call(service, OWNER, "ListFaces", params)
        seen += [f["FaceId"] for f in page["Faces"]]
        pages += 1
        token = page.get("NextToken")
        if not token:
            break
    assert seen == all_ids and pages == 3
    with pytest.raises(InvalidPaginationTokenException):
        call(service, OWNER, "ListFaces", {"CollectionId": "gallery", "NextToken": "not-a-token"})
    # A token from one listing cannot continue another.
    first = call(service, OWNER, "ListFaces", {"CollectionId": "gallery", "MaxResults": 1})
    with pytest.raises(InvalidPaginationTokenException):
        call(service, OWNER, "ListUsers", {"CollectionId": "gallery", "NextToken": first["NextToken"]})


def test_list_collections_pagination(service):
    for i in range(7):
        call(service, OWNER, "CreateCollection", {"CollectionId": f"col-{i}"})
    first = call(service, OWNER, "ListCollections", {"MaxResults": 4})
    assert first["CollectionIds"] == [f"col-{i}" for i in range(4)]
    second = call(service, OWNER, "ListCollections", {"MaxResults": 4, "NextToken": first["NextToken"]})
    assert second["CollectionIds"] == [f"col-{i}" for i in range(4, 7)] and "NextToken" not in second
    with pytest.raises(InvalidPaginationTokenException):  # another owner cannot replay our token
        call(service, OTHER, "ListCollections", {"NextToken": first["NextToken"]})


def test_compare_faces(service, people, group_photo):
    same = call(
        service,
        OWNER,
        "CompareFaces",
        {"SourceImage": image_of(people["Tony_Blair"][0]), "TargetImage": image_of(people["Tony_Blair"][1])},
    )
    assert len(same["FaceMatches"]) == 1 and same["FaceMatches"][0]["Similarity"] >= 80
    assert same["UnmatchedFaces"] == []
    assert same["SourceImageFace"]["Confidence"] > 50
    different = call(
        service,
        OWNER,
        "CompareFaces",
        {"SourceImage": image_of(people["Tony_Blair"][0]), "TargetImage": {"Bytes": group_photo}},
    )
    assert different["FaceMatches"] == [] and len(different["UnmatchedFaces"]) == 6
    assert {"BoundingBox", "Confidence", "Landmarks", "Pose", "Quality"} <= set(different["UnmatchedFaces"][0])


def test_compare_threshold_zero_matches_everything(service, people, group_photo):
    response = call(
        service,
        OWNER,
        "CompareFaces",
        {
            "SourceImage": image_of(people["Tony_Blair"][0]),
            "TargetImage": {"Bytes": group_photo},
            "SimilarityThreshold": 0,
        },
    )
    assert len(response["FaceMatches"]) == 6


def test_detect_faces(service, group_photo):
    response = call(service, OWNER, "DetectFaces", {"Image": {"Bytes": group_photo}, "Attributes": ["DEFAULT"]})
    assert len(response["FaceDetails"]) == 6
    for detail in response["FaceDetails"]:
        box = detail["BoundingBox"]
        assert 0 <= box["Left"] <= 1 and 0 <= box["Top"] <= 1
        marks = {lm["Type"]: lm for lm in detail["Landmarks"]}
        assert len(marks) == 30
        assert marks["eyeLeft"]["X"] < marks["eyeRight"]["X"]  # viewer's left, as in Rekognition
        assert marks["eyeLeft"]["Y"] < marks["mouthLeft"]["Y"] < marks["chinBottom"]["Y"]
        assert box["Left"] <= marks["nose"]["X"] <= box["Left"] + box["Width"]
        assert "AgeRange" not in detail and "Gender" not in detail  # never estimated, by design


def test_users_lifecycle(service, gallery):
    blair = gallery["Tony_Blair"]
    call(service, OWNER, "CreateUser", {"CollectionId": "gallery", "UserId": "tony"})
    with pytest.raises(ConflictException):
        call(service, OWNER, "CreateUser", {"CollectionId": "gallery", "UserId": "tony"})
    associated = call(service, OWNER, "AssociateFaces", {"CollectionId": "gallery", "UserId": "tony", "FaceIds": blair})
    assert sorted(f["FaceId"] for f in associated["AssociatedFaces"]) == sorted(blair)
    assert associated["UserStatus"] == "ACTIVE"

    # Someone else's face does not match the user's faces well enough to join.
    powell = gallery["Colin_Powell"][0]
    refused = call(service, OWNER, "AssociateFaces", {"CollectionId": "gallery", "UserId": "tony", "FaceIds": [powell]})
    assert refused["AssociatedFaces"] == []
    assert refused["UnsuccessfulFaceAssociations"][0]["Reasons"] == ["LOW_MATCH_CONFIDENCE"]

    # A face of a user cannot be deleted, nor taken by another user.
    deleted = call(service, OWNER, "DeleteFaces", {"CollectionId": "gallery", "FaceIds": [blair[0]]})
    assert deleted["UnsuccessfulFaceDeletions"][0]["Reasons"] == ["ASSOCIATED_TO_AN_EXISTING_USER"]
    call(service, OWNER, "CreateUser", {"CollectionId": "gallery", "UserId": "other"})
    taken = call(
        service, OWNER, "AssociateFaces", {"CollectionId": "gallery", "UserId": "other", "FaceIds": [blair[0]]}
    )
    assert taken["UnsuccessfulFaceAssociations"][0]["Reasons"] == ["ASSOCIATED_TO_A_DIFFERENT_USER"]

    listed = call(service, OWNER, "ListFaces", {"CollectionId": "gallery", "UserId": "tony"})
    assert sorted(f["FaceId"] for f in listed["Faces"]) == sorted(blair)
    assert all(f["UserId"] == "tony" for f in listed["Faces"])
    users = call(service, OWNER, "ListUsers", {"CollectionId": "gallery"})["Users"]
    assert [u["UserId"] for u in users] == ["other", "tony"]
    described = call(service, OWNER, "DescribeCollection", {"CollectionId": "gallery"})
    assert described["UserCount"] == 2 and described["FaceCount"] == 12

    by_face = call(service, OWNER, "SearchUsers", {"CollectionId": "gallery", "FaceId": gallery["Tony_Blair"][0]})
    assert by_face["UserMatches"][0]["User"]["UserId"] == "tony"

    out = call(
        service, OWNER, "DisassociateFaces", {"CollectionId": "gallery", "UserId": "tony", "FaceIds": [blair[0]]}
    )
    assert out["DisassociatedFaces"] == [{"FaceId": blair[0]}]
    call(service, OWNER, "DeleteUser", {"CollectionId": "gallery", "UserId": "tony"})
    assert call(service, OWNER, "DeleteFaces", {"CollectionId": "gallery", "FaceIds": blair[1:]})["DeletedFaces"]
    described = call(service, OWNER, "DescribeCollection", {"CollectionId": "gallery"})
    assert described["UserCount"] == 1 and described["FaceCount"] == 12 - len(blair[1:])


def test_search_users_by_image(service, people, gallery):
    call(service, OWNER, "CreateUser", {"CollectionId": "gallery", "UserId": "serena"})
    call(
        service,
        OWNER,
        "AssociateFaces",
        {"CollectionId": "gallery", "UserId": "serena", "FaceIds": gallery["Serena_Williams"]},
    )
    response = call(
        service,
        OWNER,
        "SearchUsersByImage",
        {"CollectionId": "gallery", "Image": image_of(people["Serena_Williams"][3])},
    )
    assert response["UserMatches"][0]["User"] == {"UserId": "serena", "UserStatus": "ACTIVE"}
    assert "BoundingBox" in response["SearchedFace"]["FaceDetail"]
    nobody = call(
        service, OWNER, "SearchUsersByImage", {"CollectionId": "gallery", "Image": image_of(people["Colin_Powell"][3])}
    )
    assert nobody["UserMatches"] == []


def test_client_request_token_idempotency(service, gallery):
    params = {"CollectionId": "gallery", "UserId": "u1", "ClientRequestToken": "token-1"}
    call(service, OWNER, "CreateUser", params)
    assert call(service, OWNER, "CreateUser", params) == {}  # a retry, not a conflict
    with pytest.raises(IdempotentParameterMismatchException):
        call(service, OWNER, "CreateUser", {**params, "UserId": "u2"})


def test_tags(service):
    arn = call(service, OWNER, "CreateCollection", {"CollectionId": "t", "Tags": {"a": "1"}})["CollectionArn"]
    call(service, OWNER, "TagResource", {"ResourceArn": arn, "Tags": {"b": "2"}})
    assert call(service, OWNER, "ListTagsForResource", {"ResourceArn": arn})["Tags"] == {"a": "1", "b": "2"}
    call(service, OWNER, "UntagResource", {"ResourceArn": arn, "TagKeys": ["a"]})
    assert call(service, OWNER, "ListTagsForResource", {"ResourceArn": arn})["Tags"] == {"b": "2"}


def test_validation_errors_carry_rekognition_codes(service, people):
    with pytest.raises(ValidationException, match="regular expression"):
        call(service, OWNER, "CreateCollection", {"CollectionId": "has spaces"})
    with pytest.raises(ValidationException, match="4096"):
        call(
            service,
            OWNER,
            "SearchFacesByImage",
            {"CollectionId": "c", "Image": image_of(people["Tony_Blair"][0]), "MaxFaces": 5000},
        )
    with pytest.raises(InvalidS3ObjectException, match="Bytes"):
        call(service, OWNER, "DetectFaces", {"Image": {"S3Object": {"Bucket": "my-bucket", "Name": "photo.jpg"}}})
    with pytest.raises(FacegateError) as info:
        call(service, OWNER, "DetectFaces", {"Image": {"Bytes": b"not an image"}})
    assert info.value.code == "InvalidImageFormatException"


def test_collection_refuses_another_models_faces(service, store, people):
    store.create_collection(OWNER, "old-model", "some-other-model-v0", {})
    with pytest.raises(InvalidParameterException, match="cannot be mixed"):
        index(service, "old-model", people["Tony_Blair"][0])


def test_index_many_answers_each_image_as_index_would(service, people, group_photo, tmp_path):
    """Bulk indexing batches the network across images; each image is still checked and stored on its own."""
    from facegate.errors import InvalidImageFormatException

    call(service, OWNER, "CreateCollection", {"CollectionId": "bulk"})
    call(service, OWNER, "CreateCollection", {"CollectionId": "single"})
    blair, powell = people["Tony_Blair"][0], people["Colin_Powell"][0]
    images = [blair.read_bytes(), group_photo, blair.read_bytes()[:200], powell.read_bytes(), blair.read_bytes()]

    def request(collection: str, i: int) -> dict:
        return {"CollectionId": collection, "Image": {"Bytes": images[i]}, "ExternalImageId": f"img{i % 4}"}

    results = service.index_many(OWNER, [request("bulk", i) for i in range(len(images))])
    singles = []
    for i in range(len(images)):
        try:
            singles.append(service.call(OWNER, "IndexFaces", request("single", i)))
        except InvalidImageFormatException as exc:
            singles.append(exc)

    assert isinstance(results[2], InvalidImageFormatException)  # the truncated image fails alone
    assert results[4].repeated is True  # the same image and ExternalImageId again: a repeat, nothing new stored
    assert results[4].records[0].face.face_id == results[0].records[0].face.face_id
    for batched, single in zip(results, singles, strict=True):
        if isinstance(single, Exception):
            assert type(batched) is type(single)
            continue
        assert batched.repeated == single.repeated
        assert len(batched.records) == len(single.records)
        for a, b in zip(batched.records, single.records, strict=True):
            assert a.face.box == b.face.box  # where each face was found (or, for a repeat, was stored)
    assert len(results[1].records) > 1  # the group photo's faces went through the same network run
    bulk = service.store.get_collection(OWNER, "bulk")
    single = service.store.get_collection(OWNER, "single")
    assert bulk.face_count == single.face_count
    # Same embeddings as one image at a time (the network's batch size changes nothing beyond rounding).
    a = np.stack(sorted(service.store.gallery(bulk).embeddings.tolist()))
    b = np.stack(sorted(service.store.gallery(single).embeddings.tolist()))
    assert np.abs(a - b).max() < 1e-5
