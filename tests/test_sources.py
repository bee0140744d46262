"""S3Object images from registered object sources: unmodified boto3 passing S3Object to every image operation,
names that cannot leave their source, versions checked, and another organisation's bucket indistinguishable from
one that does not exist."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
from botocore.exceptions import ClientError

from facegate.errors import ImageTooLargeException, InvalidParameterException, InvalidS3ObjectException
from facegate.keys import KeyRing
from facegate.sources import MAX_OBJECT_BYTES, directory_source, read_object, resolve_images

from .test_http import boto_client, running_server
from .test_http import facegate as run_facegate

NOT_FOUND = "Unable to get object metadata from S3"


@pytest.fixture
def sealer(store, tmp_path):
    """The key ring that seals access keys' secrets seals sources' too."""
    return KeyRing(store, tmp_path / "keys")


@pytest.fixture
def bucket(tmp_path, people):
    """A source directory of real photos, with a sibling directory outside it."""
    root = tmp_path / "bucket"
    (root / "blair").mkdir(parents=True)
    for i, path in enumerate(people["Tony_Blair"][:2]):
        shutil.copy(path, root / "blair" / f"{i}.jpg")
    shutil.copy(people["Colin_Powell"][0], root / "powell.jpg")
    outside = tmp_path / "secret"
    outside.mkdir()
    shutil.copy(people["Serena_Williams"][0], outside / "private.jpg")
    return root


def test_objects_are_read_from_the_owners_source_only(store, sealer, bucket):
    store.add_source(directory_source("acme", "photos", bucket))
    data = read_object(store, "acme", sealer, {"Bucket": "photos", "Name": "blair/0.jpg"})
    assert data == (bucket / "blair" / "0.jpg").read_bytes()
    with pytest.raises(InvalidS3ObjectException, match=NOT_FOUND) as other_org:
        read_object(store, "city-of-x", sealer, {"Bucket": "photos", "Name": "blair/0.jpg"})
    with pytest.raises(InvalidS3ObjectException, match=NOT_FOUND) as no_bucket:
        read_object(store, "acme", sealer, {"Bucket": "nothing-here", "Name": "blair/0.jpg"})
    assert str(other_org.value) == str(no_bucket.value)  # nothing tells another's bucket from a missing one
    with pytest.raises(InvalidS3ObjectException, match=NOT_FOUND):
        read_object(store, "acme", sealer, {"Bucket": "photos", "Name": "blair/9.jpg"})


@pytest.mark.parametrize(
    "name", ["../secret/private.jpg", "blair/../../secret/private.jpg", "/etc/passwd", "blair//0.jpg", "./powell.jpg"]
)
def test_a_name_cannot_leave_its_source(store, sealer, bucket, name):
    store.add_source(directory_source("acme", "photos", bucket))
    with pytest.raises(InvalidS3ObjectException, match="is not an object key"):
        read_object(store, "acme", sealer, {"Bucket": "photos", "Name": name})


def test_no_symlink_is_followed_and_nothing_but_a_file_is_opened(store, sealer, bucket):
    os.symlink(bucket.parent / "secret" / "private.jpg", bucket / "link.jpg")
    os.symlink(bucket.parent / "secret", bucket / "linked-dir")
    os.symlink(bucket / "powell.jpg", bucket / "inside.jpg")  # even within the source: S3 has no links
    os.mkfifo(bucket / "pipe.jpg")  # opening a FIFO to read would block the request for good
    store.add_source(directory_source("acme", "photos", bucket))
    for name in ("link.jpg", "linked-dir/private.jpg", "inside.jpg", "pipe.jpg"):
        with pytest.raises(InvalidS3ObjectException, match=NOT_FOUND):
            read_object(store, "acme", sealer, {"Bucket": "photos", "Name": name})


def test_version_is_the_objects_sha256(store, sealer, bucket):
    store.add_source(directory_source("acme", "photos", bucket))
    digest = hashlib.sha256((bucket / "powell.jpg").read_bytes()).hexdigest()
    assert read_object(store, "acme", sealer, {"Bucket": "photos", "Name": "powell.jpg", "Version": digest})
    with pytest.raises(InvalidS3ObjectException, match="is not this object's version"):
        read_object(store, "acme", sealer, {"Bucket": "photos", "Name": "powell.jpg", "Version": "0" * 64})


def test_bad_objects_and_sources_get_clear_errors(store, sealer, bucket):
    store.add_source(directory_source("acme", "photos", bucket))
    (bucket / "huge.jpg").write_bytes(b"\xff\xd8" + b"\0" * MAX_OBJECT_BYTES)
    with pytest.raises(ImageTooLargeException, match="at most"):
        read_object(store, "acme", sealer, {"Bucket": "photos", "Name": "huge.jpg"})
    (bucket / "folder").mkdir()
    with pytest.raises(InvalidS3ObjectException, match=NOT_FOUND):
        read_object(store, "acme", sealer, {"Bucket": "photos", "Name": "folder"})
    for bad in ("not a dict", {"Bucket": "photos"}, {"Name": "powell.jpg"}, {"Bucket": "photos", "Name": 3}):
        with pytest.raises(InvalidS3ObjectException):
            read_object(store, "acme", sealer, bad)
    with pytest.raises(InvalidParameterException, match="not both"):
        resolve_images(store, "acme", {"Image": {"Bytes": b"x", "S3Object": {"Bucket": "photos", "Name": "x"}}}, sealer)
    with pytest.raises(InvalidParameterException, match="not a valid bucket name"):
        directory_source("acme", "Photos_2020", bucket)
    with pytest.raises(InvalidParameterException, match="does not exist"):
        directory_source("acme", "photos", bucket / "missing")


def test_boto3_passes_s3objects_to_every_image_operation(tmp_path, bucket):
    home = tmp_path / "data"
    run_facegate(home, "orgs", "create", "acme", "--category", "commercial", "--jurisdiction", "US-NY")
    run_facegate(home, "orgs", "create", "city-of-x", "--category", "commercial", "--jurisdiction", "US-NY")
    acme = json.loads(run_facegate(home, "keys", "create", "--org", "acme", "--json"))
    city = json.loads(run_facegate(home, "keys", "create", "--org", "city-of-x", "--json"))
    run_facegate(home, "sources", "add", "family-photos", "--org", "acme", "--dir", str(bucket), "--reason", "pilot")
    listed = json.loads(run_facegate(home, "sources", "list", "--json"))
    assert [(s["Organisation"], s["Bucket"]) for s in listed] == [("acme", "family-photos")]

    def obj(name: str) -> dict:
        return {"S3Object": {"Bucket": "family-photos", "Name": name}}

    with running_server(home, "--workers", "1") as endpoint:
        rek = boto_client(endpoint, acme, retries=1)
        rek.create_collection(CollectionId="family")
        indexed = rek.index_faces(CollectionId="family", Image=obj("blair/0.jpg"), ExternalImageId="blair-0")
        face_id = indexed["FaceRecords"][0]["Face"]["FaceId"]
        found = rek.search_faces_by_image(CollectionId="family", Image=obj("blair/1.jpg"))
        assert [m["Face"]["FaceId"] for m in found["FaceMatches"]] == [face_id]
        compared = rek.compare_faces(SourceImage=obj("blair/0.jpg"), TargetImage=obj("powell.jpg"))
        assert compared["UnmatchedFaces"] and not compared["FaceMatches"]
        source_bytes = (bucket / "powell.jpg").read_bytes()
        mixed = rek.compare_faces(SourceImage={"Bytes": source_bytes}, TargetImage=obj("blair/1.jpg"))
        assert mixed["UnmatchedFaces"]
        assert len(rek.detect_faces(Image=obj("powell.jpg"))["FaceDetails"]) == 1
        rek.create_user(CollectionId="family", UserId="tony")
        rek.associate_faces(CollectionId="family", UserId="tony", FaceIds=[face_id])
        users = rek.search_users_by_image(CollectionId="family", Image=obj("blair/1.jpg"))["UserMatches"]
        assert [u["User"]["UserId"] for u in users] == ["tony"]

        other = boto_client(endpoint, city, retries=1)
        other.create_collection(CollectionId="family")
        messages = []
        for bucket_name in ("family-photos", "no-such-bucket"):
            with pytest.raises(ClientError) as refused:
                other.detect_faces(Image={"S3Object": {"Bucket": bucket_name, "Name": "powell.jpg"}})
            assert refused.value.response["Error"]["Code"] == "InvalidS3ObjectException"
            messages.append(refused.value.response["Error"]["Message"])
        assert messages[0] == messages[1]
        with pytest.raises(ClientError) as escaping:
            rek.detect_faces(Image=obj("../secret/private.jpg"))
        assert escaping.value.response["Error"]["Code"] == "InvalidS3ObjectException"

    records = [json.loads(line) for line in run_facegate(home, "audit", "show", "--json").splitlines()]
    index_record = next(r for r in records if r.get("operation") == "IndexFaces" and r.get("decision") == "allow")
    assert index_record["image_sha256"] == [hashlib.sha256((bucket / "blair" / "0.jpg").read_bytes()).hexdigest()]
    assert any(r.get("event") == "source_added" and r.get("source") == "family-photos" for r in records)
    comparisons = [r for r in records if r.get("operation") == "CompareFaces" and r.get("decision") == "allow"]
    digests = [hashlib.sha256(data).hexdigest() for data in (source_bytes, (bucket / "blair" / "1.jpg").read_bytes())]
    assert comparisons[-1]["image_sha256"] == digests  # Bytes and S3Object in one request: both audited
    refusals = [r for r in records if r.get("error_code") == "InvalidS3ObjectException"]
    assert len(refusals) == 3  # each refused read is audited


@pytest.fixture
def s3_endpoint():
    """A local S3-compatible server (moto's server mode) on a free loopback port: the code under test is
    facegate's S3 client, reading with the credentials a source was given."""
    moto_server = pytest.importorskip("moto.server", reason="moto is not installed: pip install -e '.[test]'")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_an_s3_source_is_read_with_its_own_sealed_credentials(tmp_path, s3_endpoint, people, monkeypatch):
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="AKIDSOURCE",
        aws_secret_access_key="source-secret-0123456789",
    )  # fmt: skip
    s3.create_bucket(Bucket="ring-doorbell")
    s3.put_bucket_versioning(Bucket="ring-doorbell", VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket="ring-doorbell", Key="2020/visitor.jpg", Body=people["Colin_Powell"][0].read_bytes())
    s3.put_object(Bucket="ring-doorbell", Key="2020/visitor.jpg", Body=b"replaced: not an image any more")

    home = tmp_path / "data"
    run_facegate(home, "orgs", "create", "acme", "--category", "commercial", "--jurisdiction", "US-NY")
    key = json.loads(run_facegate(home, "keys", "create", "--org", "acme", "--json"))
    monkeypatch.setenv("FACEGATE_SOURCE_SECRET_KEY", "source-secret-0123456789")
    run_facegate(
        home, "sources", "add", "doorbell", "--org", "acme", "--s3", s3_endpoint, "--s3-bucket", "ring-doorbell",
        "--access-key-id", "AKIDSOURCE", "--reason", "pilot",
    )  # fmt: skip
    assert b"source-secret-0123456789" not in (home / "facegate.sqlite3").read_bytes()  # stored sealed
    assert "source-secret" not in run_facegate(home, "audit", "show", "--json")  # and never audited

    def obj(**extra) -> dict:
        return {"S3Object": {"Bucket": "doorbell", "Name": "2020/visitor.jpg", **extra}}

    with running_server(home, "--workers", "1") as endpoint:
        rek = boto_client(endpoint, key, retries=1)
        with pytest.raises(ClientError) as latest:
            rek.detect_faces(Image=obj())  # the latest version is not an image
        assert latest.value.response["Error"]["Code"] == "InvalidImageFormatException"
        found = rek.detect_faces(Image=obj(Version=first["VersionId"]))["FaceDetails"]
        assert len(found) == 1
        digest = hashlib.sha256(people["Colin_Powell"][0].read_bytes()).hexdigest()
        with pytest.raises(ClientError) as stale:  # a SHA-256 names content: the latest object's is another
            rek.detect_faces(Image=obj(Version=digest))
        assert "is not this object's version" in stale.value.response["Error"]["Message"]
        with pytest.raises(ClientError) as refused:
            rek.detect_faces(Image=obj(Version="not-a-version-id"))
        assert refused.value.response["Error"]["Code"] == "InvalidS3ObjectException"
        assert "is not a version of it" in refused.value.response["Error"]["Message"]
        with pytest.raises(ClientError) as missing:
            rek.detect_faces(Image={"S3Object": {"Bucket": "doorbell", "Name": "2020/nobody.jpg"}})
        assert missing.value.response["Error"]["Code"] == "InvalidS3ObjectException"
        assert NOT_FOUND in missing.value.response["Error"]["Message"]
