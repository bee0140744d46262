"""Rekognition's response shapes: each operation's typed result (``facegate.results``) as the JSON object
Rekognition answers with. The HTTP API sends exactly this (plus facegate's own ``FacegateDecision`` member) and
the CLI prints it with ``--json``; nowhere else is a response built. (``server/wire.py`` frames it in HTTP.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from facegate.results import (
    Association,
    BoundingBox,
    CollectionCreated,
    CollectionDeleted,
    CollectionDescription,
    CollectionPage,
    Comparison,
    Detection,
    FaceMatch,
    FaceMatches,
    FacePage,
    FaceRecord,
    FaceRefusal,
    FacesDeleted,
    FoundFace,
    IndexResult,
    JobStarted,
    PersonMatch,
    ResourceTags,
    Result,
    ReviewOutcome,
    TagsChanged,
    UserCreated,
    UserDeleted,
    UserMatch,
    UserMatches,
    UserPage,
    VideoFace,
    VideoJobResults,
)
from facegate.store import StoredFace

Json = dict[str, Any]


def to_wire(operation: str, result: Result) -> Json:
    """The Rekognition response of ``operation`` for its ``result``."""
    writer = _WRITERS.get(operation)
    if writer is None:
        raise ValueError(f"{operation} is not a Rekognition operation: it has no response shape.")
    return writer(result)


# Collections


def _collection_created(r: CollectionCreated) -> Json:
    return {"StatusCode": 200, "CollectionArn": r.arn, "FaceModelVersion": r.model_version}


def _collection_description(r: CollectionDescription) -> Json:
    return {
        "FaceCount": r.face_count,
        "UserCount": r.user_count,
        "FaceModelVersion": r.model_version,
        "CollectionARN": r.arn,
        "CreationTimestamp": r.created_at,
    }


def _collection_page(r: CollectionPage) -> Json:
    out: Json = {
        "CollectionIds": [c.collection_id for c in r.collections],
        "FaceModelVersions": [c.model_version for c in r.collections],
    }
    return _continued(out, r.next_token)


def _collection_deleted(r: CollectionDeleted) -> Json:
    return {"StatusCode": 200}


# Faces


def _index_result(r: IndexResult) -> Json:
    return {
        "FaceModelVersion": r.model_version,
        "FaceRecords": [_face_record(record) for record in r.records],
        "UnindexedFaces": [{"Reasons": list(u.reasons), "FaceDetail": _face_detail(u.face)} for u in r.unindexed],
    }


def _face_record(record: FaceRecord) -> Json:
    face = _stored_face(record.face)
    if record.found is None:  # indexed before: the stored geometry is all there is
        return {"Face": face, "FaceDetail": {"BoundingBox": face["BoundingBox"], "Confidence": record.face.confidence}}
    return {"Face": face, "FaceDetail": _face_detail(record.found)}


def _face_page(r: FacePage) -> Json:
    return _continued({"Faces": [_stored_face(f) for f in r.faces], "FaceModelVersion": r.model_version}, r.next_token)


def _faces_deleted(r: FacesDeleted) -> Json:
    return {"DeletedFaces": list(r.deleted), "UnsuccessfulFaceDeletions": [_refusal(f) for f in r.refused]}


# Search and compare


def _search_faces(r: FaceMatches) -> Json:
    return {"SearchedFaceId": r.searched_face_id, "FaceMatches": _face_matches(r), "FaceModelVersion": r.model_version}


def _search_faces_by_image(r: FaceMatches) -> Json:
    assert r.searched_face is not None, "SearchFacesByImage's result names the face it searched with"
    return {
        "SearchedFaceBoundingBox": _box(r.searched_face.bounding_box),
        "SearchedFaceConfidence": r.searched_face.confidence,
        "FaceMatches": _face_matches(r),
        "FaceModelVersion": r.model_version,
    }


def _face_matches(r: FaceMatches) -> list[Json]:
    return [_face_match(m) for m in r.matches]


def _face_match(m: FaceMatch) -> Json:
    return {"Similarity": m.similarity, "Face": _stored_face(m.face)}


def _comparison(r: Comparison) -> Json:
    return {
        "SourceImageFace": {"BoundingBox": _box(r.source.bounding_box), "Confidence": r.source.confidence},
        "FaceMatches": [{"Similarity": m.similarity, "Face": _compared_face(m.face)} for m in r.matches],
        "UnmatchedFaces": [_compared_face(f) for f in r.unmatched],
    }


def _detection(r: Detection) -> Json:
    return {"FaceDetails": [_face_detail(f) for f in r.faces]}


# Users


def _done(r: UserCreated | UserDeleted | TagsChanged) -> Json:
    return {}


def _user_page(r: UserPage) -> Json:
    return _continued({"Users": [{"UserId": u.user_id, "UserStatus": u.status} for u in r.users]}, r.next_token)


def _associated(r: Association) -> Json:
    return {
        "AssociatedFaces": [{"FaceId": f} for f in r.face_ids],
        "UnsuccessfulFaceAssociations": [_refusal(f) for f in r.refused],
        "UserStatus": r.user_status,
    }


def _disassociated(r: Association) -> Json:
    return {
        "DisassociatedFaces": [{"FaceId": f} for f in r.face_ids],
        "UnsuccessfulFaceDisassociations": [_refusal(f) for f in r.refused],
        "UserStatus": r.user_status,
    }


def _search_users(r: UserMatches) -> Json:
    out: Json = {"FaceModelVersion": r.model_version}
    if r.searched_face_id is not None:
        out["SearchedFace"] = {"FaceId": r.searched_face_id}
    else:
        out["SearchedUser"] = {"UserId": r.searched_user_id}
    out["UserMatches"] = _user_matches(r)
    return out


def _search_users_by_image(r: UserMatches) -> Json:
    assert r.searched_face is not None, "SearchUsersByImage's result names the face it searched with"
    return {
        "UserMatches": _user_matches(r),
        "FaceModelVersion": r.model_version,
        "SearchedFace": {"FaceDetail": _face_detail(r.searched_face)},
        # Only the largest face is searched: every other face is unsearched for that one reason.
        "UnsearchedFaces": [{"FaceDetails": _face_detail(f), "Reasons": ["FACE_NOT_LARGEST"]} for f in r.unsearched],
    }


def _user_matches(r: UserMatches) -> list[Json]:
    return [_user_match(m) for m in r.matches]


def _user_match(m: UserMatch) -> Json:
    return {"Similarity": m.similarity, "User": {"UserId": m.user_id, "UserStatus": m.user_status}}


# Tags


def _tags(r: ResourceTags) -> Json:
    return {"Tags": dict(r.tags)}


# Stored video


def _job_started(r: JobStarted) -> Json:
    return {"JobId": r.job_id}


def _face_search_results(r: VideoJobResults) -> Json:
    return _continued({**_job_status(r), "Persons": [_person_match(p) for p in r.persons]}, r.next_token)


def _face_detection_results(r: VideoJobResults) -> Json:
    return _continued({**_job_status(r), "Faces": [_video_face(f) for f in r.faces]}, r.next_token)


def _job_status(r: VideoJobResults) -> Json:
    job = r.job
    out: Json = {"JobStatus": job.status}
    if job.status_message:
        out["StatusMessage"] = job.status_message
    if job.video_metadata:
        m = job.video_metadata
        out["VideoMetadata"] = {
            "Codec": m["codec"],
            "DurationMillis": m["duration_ms"],
            "Format": m["format"],
            "FrameRate": m["frame_rate"],
            "FrameHeight": m["height"],
            "FrameWidth": m["width"],
            "ColorRange": m["color_range"],
        }
    out.update(JobId=job.job_id, Video=job.request["Video"])
    if job.request.get("JobTag"):
        out["JobTag"] = job.request["JobTag"]
    if job.review_cases:  # facegate's member (botocore ignores it): the persons whose matches await review
        out["FacegateDecision"] = {
            "ReviewCases": [{"PersonIndex": int(i), "CaseId": c} for i, c in sorted(job.review_cases.items())]
        }
    return out


def _person_match(p: PersonMatch) -> Json:
    return {
        "Timestamp": p.timestamp_ms,
        "Person": {"Index": p.index, "BoundingBox": _box(p.face.bounding_box), "Face": _face_detail(p.face)},
        "FaceMatches": [_face_match(m) for m in p.matches],
    }


def _video_face(f: VideoFace) -> Json:
    return {"Timestamp": f.timestamp_ms, "Face": _face_detail(f.face)}


# Human review (facegate's own operation)


def _review_outcome(r: ReviewOutcome) -> Json:
    case = r.case
    out: Json = {"CaseId": case.case_id, "Status": case.status.upper(), "ReviewersRequired": case.reviewers_required}
    if r.face_matches:
        out["FaceMatches"] = [_face_match(m) for m in r.face_matches]
    if r.user_matches:
        out["UserMatches"] = [_user_match(m) for m in r.user_matches]
    return out


# Shapes shared by several operations


def _compared_face(found: FoundFace) -> Json:
    """Rekognition's ComparedFace: geometry, confidence, landmarks, pose, quality."""
    face = found.face
    return {
        "BoundingBox": _box(found.bounding_box),
        "Confidence": face.confidence,
        "Landmarks": [{"Type": name, "X": x, "Y": y} for name, (x, y) in found.landmarks.items()],
        "Pose": {"Roll": face.pose.roll, "Yaw": face.pose.yaw, "Pitch": face.pose.pitch},
        "Quality": {"Brightness": face.quality.brightness, "Sharpness": face.quality.sharpness},
    }


def _face_detail(found: FoundFace) -> Json:
    """Rekognition's FaceDetail with the DEFAULT attributes. Age, gender and emotion are never estimated."""
    return _compared_face(found)


def _stored_face(face: StoredFace) -> Json:
    """Rekognition's Face: a face of a collection (ExternalImageId and UserId only when it has them)."""
    out: Json = {
        "FaceId": face.face_id,
        "BoundingBox": _box(BoundingBox(*face.box)),
        "ImageId": face.image_id,
        "Confidence": face.confidence,
        "IndexFacesModelVersion": face.model_version,
    }
    if face.external_image_id is not None:
        out["ExternalImageId"] = face.external_image_id
    if face.user_id is not None:
        out["UserId"] = face.user_id
    return out


def _box(box: BoundingBox) -> dict[str, float]:
    return {"Width": box.width, "Height": box.height, "Left": box.left, "Top": box.top}


def _refusal(f: FaceRefusal) -> Json:
    out: Json = {"FaceId": f.face_id}
    if f.user_id is not None:
        out["UserId"] = f.user_id
    if f.confidence is not None:
        out["Confidence"] = f.confidence
    out["Reasons"] = list(f.reasons)
    return out


def _continued(out: Json, next_token: str | None) -> Json:
    if next_token is not None:
        out["NextToken"] = next_token
    return out


_WRITERS: dict[str, Callable[[Any], Json]] = {
    "CreateCollection": _collection_created,
    "DescribeCollection": _collection_description,
    "ListCollections": _collection_page,
    "DeleteCollection": _collection_deleted,
    "IndexFaces": _index_result,
    "ListFaces": _face_page,
    "DeleteFaces": _faces_deleted,
    "SearchFaces": _search_faces,
    "SearchFacesByImage": _search_faces_by_image,
    "CompareFaces": _comparison,
    "DetectFaces": _detection,
    "CreateUser": _done,
    "DeleteUser": _done,
    "ListUsers": _user_page,
    "AssociateFaces": _associated,
    "DisassociateFaces": _disassociated,
    "SearchUsers": _search_users,
    "SearchUsersByImage": _search_users_by_image,
    "TagResource": _done,
    "UntagResource": _done,
    "ListTagsForResource": _tags,
    "StartFaceSearch": _job_started,
    "StartFaceDetection": _job_started,
    "GetFaceSearch": _face_search_results,
    "GetFaceDetection": _face_detection_results,
    "GetReviewCase": _review_outcome,
}
