"""Every operation's wire output, on real faces, against botocore's Rekognition model of its response: member
names, JSON types and enum values, recursively — what boto3 and the AWS CLI read."""

from __future__ import annotations

import json

import botocore.loaders
import pytest
from botocore.model import ServiceModel, Shape

from facegate.wire import to_wire

from .conftest import OWNER, image_of

MODEL = ServiceModel(botocore.loaders.Loader().load_service_model("rekognition", "service-2"))
NOT_A_FACE = "11111111-1111-1111-1111-111111111111"
NUMBERS = {"integer": (int,), "long": (int,), "float": (int, float), "double": (int, float), "timestamp": (int, float)}


def mismatches(value: object, shape: Shape, path: str = "") -> list[str]:
    """Where ``value`` (decoded JSON) does not fit ``shape``, one line each; nothing when it fits."""
    where = path or "(response)"
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__}, not an object"]
        found = [f"{where}.{name}: not a member of {shape.name}" for name in value if name not in shape.members]
        found += [f"{where}: required {name} is missing" for name in shape.required_members if name not in value]
        for name, item in value.items():
            if name in shape.members:
                found += mismatches(item, shape.members[name], f"{path}.{name}".lstrip("."))
        return found
    if kind == "list":
        if not isinstance(value, list):
            return [f"{where}: {type(value).__name__}, not a list"]
        return [line for i, item in enumerate(value) for line in mismatches(item, shape.member, f"{path}[{i}]")]
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{where}: {type(value).__name__}, not an object"]
        found = [f"{where}: key {key!r} is not a string" for key in value if not isinstance(key, str)]
        return found + [line for k, v in value.items() for line in mismatches(v, shape.value, f"{path}[{k!r}]")]
    if kind == "string":
        if not isinstance(value, str):
            return [f"{where}: {type(value).__name__}, not a string"]
        return [f"{where}: {value!r} is not one of {shape.enum}"] if shape.enum and value not in shape.enum else []
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{where}: {type(value).__name__}, not a boolean"]
    if kind in NUMBERS:
        # type(), not isinstance: a bool is an int to Python but not a number to JSON, nor is numpy's float32.
        return [] if type(value) in NUMBERS[kind] else [f"{where}: {type(value).__name__}, not a JSON {kind}"]
    return [f"{where}: facegate never answers with a {kind}"]


def wire(service, operation: str, params: dict, owner: str = OWNER) -> dict:
    """The operation's response as it crosses the wire: to_wire's object, through JSON as the server sends it."""
    return json.loads(json.dumps(to_wire(operation, service.call(owner, operation, params)), allow_nan=False))


def video_answers(service, people, tmp_path, run) -> None:
    """The video operations: jobs on a clip from a directory source, analysed as the job runner does."""
    from facegate.engine.video import VideoFile
    from facegate.keys import KeyRing
    from facegate.sources import VideoObjects, directory_source
    from facegate.tracking import PersonTracker

    from .clips import Appearance, make_clip

    (tmp_path / "cams").mkdir()
    make_clip(tmp_path / "cams" / "door.mp4", [Appearance(people["Tony_Blair"][1], 0.0, 2.0)], 2)
    service.store.add_source(directory_source(OWNER, "cams", tmp_path / "cams"))
    service.videos = VideoObjects(service.store, KeyRing(service.store, tmp_path / "keys"), tmp_path / "scratch")
    requester = {"principal": {"access_key_id": "AKIATEST", "owner": OWNER, "role": "client", "use_case_id": None}}
    video = {"S3Object": {"Bucket": "cams", "Name": "door.mp4"}}
    starts = [
        ("StartFaceSearch", {"Video": video, "CollectionId": "people", "JobTag": "door", "FaceMatchThreshold": 50}),
        ("StartFaceDetection", {"Video": video, "FaceAttributes": "ALL"}),
    ]
    for operation, params in starts:
        response = json.loads(json.dumps(to_wire(operation, service.call(OWNER, operation, params, requester))))
        run.done.append((operation, response))
        job = service.store.claim_job(response["JobId"], "test:1:a", None)
        with VideoFile(tmp_path / "cams" / "door.mp4") as clip:
            frames = list(clip.frames())
            metadata = {k: getattr(clip.metadata, k) for k in clip.metadata.__dataclass_fields__}
        batch = service.analyse_video(OWNER, job, frames, PersonTracker())
        assert batch.findings
        service.store.record_job_progress(job.job_id, "test:1:a", list(batch.findings), 2000, metadata)
        service.store.finish_job(job.job_id, "test:1:a", "SUCCEEDED", None)
        get = operation.replace("Start", "Get")
        run(get, {"JobId": job.job_id, "MaxResults": 1})  # with NextToken
        run(get, {"JobId": job.job_id})


@pytest.fixture
def answers(service, people, group_photo, tmp_path) -> list[tuple[str, dict]]:
    """Every Rekognition operation, most in each of their shapes (every optional member present somewhere)."""
    done: list[tuple[str, dict]] = []

    def run(operation: str, params: dict) -> dict:
        response = wire(service, operation, params)
        done.append((operation, response))
        return response

    run.done = done

    arn = run("CreateCollection", {"CollectionId": "people", "Tags": {"team": "a"}})["CollectionArn"]
    run("CreateCollection", {"CollectionId": "other"})
    run("ListCollections", {"MaxResults": 1})  # with NextToken
    run("DescribeCollection", {"CollectionId": "people"})
    faces: dict[str, list[str]] = {}
    for name, photos in people.items():
        for path in photos[:3]:
            indexed = run("IndexFaces", {"CollectionId": "people", "Image": image_of(path), "ExternalImageId": name})
            faces.setdefault(name, []).extend(r["Face"]["FaceId"] for r in indexed["FaceRecords"])
    blair, powell, bush = faces["Tony_Blair"], faces["Colin_Powell"], faces["George_W_Bush"]
    repeat = {"CollectionId": "people", "Image": image_of(people["Tony_Blair"][0]), "ExternalImageId": "Tony_Blair"}
    assert run("IndexFaces", repeat)["FaceRecords"]  # a repeat: the stored faces, a shorter FaceDetail
    unindexed = run("IndexFaces", {"CollectionId": "other", "Image": {"Bytes": group_photo}, "MaxFaces": 1})
    assert unindexed["UnindexedFaces"]
    run("ListFaces", {"CollectionId": "people", "MaxResults": 2})
    run("SearchFaces", {"CollectionId": "people", "FaceId": blair[0]})
    run("SearchFacesByImage", {"CollectionId": "people", "Image": image_of(people["Tony_Blair"][3])})
    source, target = image_of(people["Tony_Blair"][0]), image_of(people["Tony_Blair"][1])
    assert run("CompareFaces", {"SourceImage": source, "TargetImage": target})["FaceMatches"]
    assert run("CompareFaces", {"SourceImage": source, "TargetImage": {"Bytes": group_photo}})["UnmatchedFaces"]
    run("DetectFaces", {"Image": {"Bytes": group_photo}})
    for user in ("tony", "colin"):
        run("CreateUser", {"CollectionId": "people", "UserId": user})
    run("AssociateFaces", {"CollectionId": "people", "UserId": "tony", "FaceIds": blair})
    run("AssociateFaces", {"CollectionId": "people", "UserId": "colin", "FaceIds": powell[:1]})
    refused = run(
        "AssociateFaces",  # not found, another user's, too unlike the user's faces (with its Confidence)
        {"CollectionId": "people", "UserId": "tony", "FaceIds": [NOT_A_FACE, *powell]},
    )
    assert any("Confidence" in r for r in refused["UnsuccessfulFaceAssociations"])
    run("ListUsers", {"CollectionId": "people", "MaxResults": 1})
    run("ListFaces", {"CollectionId": "people", "UserId": "tony"})  # faces with their UserId
    run("SearchUsers", {"CollectionId": "people", "FaceId": blair[0]})
    run("SearchUsers", {"CollectionId": "people", "UserId": "colin", "UserMatchThreshold": 0})
    by_image = {"CollectionId": "people", "Image": {"Bytes": group_photo}, "UserMatchThreshold": 0}
    assert run("SearchUsersByImage", by_image)["UnsearchedFaces"]
    run("DeleteFaces", {"CollectionId": "people", "FaceIds": [blair[0], bush[0], NOT_A_FACE]})
    run("DisassociateFaces", {"CollectionId": "people", "UserId": "tony", "FaceIds": [blair[1], powell[0], bush[1]]})
    run("TagResource", {"ResourceArn": arn, "Tags": {"site": "b"}})
    run("ListTagsForResource", {"ResourceArn": arn})
    run("UntagResource", {"ResourceArn": arn, "TagKeys": ["team"]})
    run("DeleteUser", {"CollectionId": "people", "UserId": "colin"})
    run("DeleteCollection", {"CollectionId": "other"})
    video_answers(service, people, tmp_path, run)
    return done


def test_every_response_fits_botocores_output_shape(service, answers):
    assert {operation for operation, _ in answers} == service.operations  # every operation is checked
    found = [
        f"{operation}: {line}"
        for operation, response in answers
        for line in mismatches(response, MODEL.operation_model(operation).output_shape)
    ]
    assert found == []
    # Not only empty lists and the required members: each optional member and list item was written somewhere.
    written = {path for operation, response in answers for path in _paths(response, operation)}
    assert {
        "ListCollections.NextToken",
        "GetFaceSearch.NextToken",
        "GetFaceSearch.Persons.FaceMatches.Face.FaceId",
        "GetFaceSearch.Persons.Person.Face.Landmarks.Type",
        "GetFaceSearch.VideoMetadata.FrameRate",
        "GetFaceSearch.JobTag",
        "GetFaceDetection.Faces.Face.Pose.Yaw",
        "GetFaceDetection.NextToken",
        "ListFaces.NextToken",
        "ListFaces.Faces.UserId",
        "ListUsers.NextToken",
        "ListUsers.Users.UserStatus",
        "IndexFaces.FaceRecords.Face.ExternalImageId",
        "IndexFaces.FaceRecords.FaceDetail.Landmarks.Type",
        "IndexFaces.UnindexedFaces.FaceDetail.Pose.Yaw",
        "SearchFaces.FaceMatches.Face.FaceId",
        "SearchFacesByImage.FaceMatches.Similarity",
        "CompareFaces.FaceMatches.Face.Quality.Sharpness",
        "CompareFaces.UnmatchedFaces.Landmarks.X",
        "DetectFaces.FaceDetails.BoundingBox.Width",
        "AssociateFaces.AssociatedFaces.FaceId",
        "AssociateFaces.UnsuccessfulFaceAssociations.UserId",
        "AssociateFaces.UnsuccessfulFaceAssociations.Confidence",
        "DeleteFaces.UnsuccessfulFaceDeletions.UserId",
        "DisassociateFaces.DisassociatedFaces.FaceId",
        "DisassociateFaces.UnsuccessfulFaceDisassociations.UserId",
        "SearchUsers.SearchedFace.FaceId",
        "SearchUsers.SearchedUser.UserId",
        "SearchUsers.UserMatches.User.UserStatus",
        "SearchUsersByImage.UserMatches.Similarity",
        "SearchUsersByImage.UnsearchedFaces.Reasons",
        "ListTagsForResource.Tags.site",
    } <= written


def _paths(value: object, path: str) -> set[str]:
    """Every member path in ``value``; list items share their list's path."""
    if isinstance(value, dict):
        return {p for key, item in value.items() for p in {f"{path}.{key}"} | _paths(item, f"{path}.{key}")}
    if isinstance(value, list):
        return {p for item in value for p in _paths(item, path)}
    return set()


def test_the_check_catches_what_boto3_would_misread(service, people):
    """Not vacuous: a member botocore does not know, a wrong type, a value outside an enum are each found."""
    service.call(OWNER, "CreateCollection", {"CollectionId": "c"})
    response = wire(service, "IndexFaces", {"CollectionId": "c", "Image": image_of(people["Colin_Powell"][0])})
    shape = MODEL.operation_model("IndexFaces").output_shape
    assert mismatches(response, shape) == []
    record = response["FaceRecords"][0]
    record["Face"]["Similarity"] = 99.0
    record["FaceDetail"]["Confidence"] = "99.9"
    record["FaceDetail"]["Landmarks"][0]["Type"] = "thirdEye"
    response["UnindexedFaces"] = {}
    assert [line.partition(" is not one of ")[0] for line in mismatches(response, shape)] == [
        "FaceRecords[0].Face.Similarity: not a member of Face",
        "FaceRecords[0].FaceDetail.Confidence: str, not a JSON float",
        "FaceRecords[0].FaceDetail.Landmarks[0].Type: 'thirdEye'",
        "UnindexedFaces: dict, not a list",
    ]


def test_only_rekognition_operations_have_a_response_shape(service):
    """PurgeFaces is facegate's own (retention): it never crosses the wire, so it has no shape to send."""
    with pytest.raises(ValueError, match="PurgeFaces is not a Rekognition operation"):
        to_wire("PurgeFaces", service.call(OWNER, "CreateCollection", {"CollectionId": "c"}))
