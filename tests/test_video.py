"""Stored video: real faces in short H.264 clips (made here from FACEGATE_DATA photos with PyAV), searched and
detected by jobs started with unmodified boto3 from a registered source, governed like images, and resumed
when the server running them is killed."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError

from facegate.engine.video import VideoError, VideoFile

from .clips import Appearance, make_clip
from .test_http import _free_port, boto_client
from .test_http import facegate as run_facegate

MORATORIUM = "amazon-2020-police-moratorium"
TOPIC = "arn:aws:sns:us-east-1:123456789012:video-done"
ROLE = "arn:aws:iam::123456789012:role/rekognition-sns"
# The face in view: the indexed person from 0.5 s to 3 s (moving), someone never indexed from 2 s to 4.5 s.
DOOR_TIMES = [500, 1000, 1500, 2000, 2500]


@pytest.fixture(scope="module")
def clips(tmp_path_factory, people) -> Path:
    root = tmp_path_factory.mktemp("cams")
    bush, powell = people["George_W_Bush"][0], people["Colin_Powell"][0]
    make_clip(
        root / "door.mp4",
        [Appearance(bush, 0.5, 3.0), Appearance(powell, 2.0, 4.5, start=(0.7, 0.2), end=(0.9, 0.6))],
        5,
    )
    # Long enough to be caught in progress: the indexed person walks to and fro for 40 s.
    make_clip(
        root / "hall.mp4",
        [Appearance(bush, 0.0, 20.0), Appearance(bush, 20.0, 40.0, start=(0.8, 0.6), end=(0.1, 0.1))],
        40,
    )
    data = (root / "door.mp4").read_bytes()
    (root / "cut.mp4").write_bytes(data[: len(data) // 2])  # a download cut off half-way
    make_clip(root / "door.avi", [Appearance(bush, 0.5, 3.0)], 4, container="avi", codec="mpeg4")
    return root


def _wait(get, job_id: str, timeout_s: float = 300) -> dict:
    """Poll a Get call until the job has ended (a guard against hanging, not a measure of speed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = get(JobId=job_id)
        if response["JobStatus"] != "IN_PROGRESS":
            return response
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still IN_PROGRESS after {timeout_s} s")


class _Server:
    """`facegate serve` that a test can kill with SIGKILL and start again."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.process: subprocess.Popen | None = None
        self.endpoint = ""

    def start(self) -> str:
        port = _free_port()
        env = {**os.environ, "FACEGATE_HOME": str(self.home)}
        log = (self.home.parent / f"server-{port}.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "facegate", "serve", "--port", str(port), "--workers", "1"],
            stdout=log,
            stderr=log,
            env=env,
        )
        self.endpoint = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if self.process.poll() is not None:
                raise RuntimeError((self.home.parent / f"server-{port}.log").read_text())
            try:
                if httpx.get(f"{self.endpoint}/healthz", timeout=1).status_code == 200:
                    return self.endpoint
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not become healthy")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, clips, people):
    """A server with two organisations (a shop and a police department), each with a source of its own."""
    home = tmp_path_factory.mktemp("video") / "data"
    for org, category in (("acme", "commercial"), ("metro-police", "law_enforcement")):
        run_facegate(home, "orgs", "create", org, "--category", category, "--jurisdiction", "US-NY")
        run_facegate(home, "sources", "add", f"{org}-cams", "--org", org, "--dir", str(clips), "--reason", "pilot")
    keys = {
        org: json.loads(run_facegate(home, "keys", "create", "--org", org, "--json"))
        for org in ("acme", "metro-police")
    }
    server = _Server(home)
    server.start()
    rek = boto_client(server.endpoint, keys["acme"], retries=1)
    rek.create_collection(CollectionId="staff")
    indexed = rek.index_faces(
        CollectionId="staff", Image={"Bytes": people["George_W_Bush"][1].read_bytes()}, ExternalImageId="bush"
    )
    yield {
        "home": home,
        "server": server,
        "keys": keys,
        "face_id": indexed["FaceRecords"][0]["Face"]["FaceId"],
        "clips": clips,
    }
    server.stop()


def _video(name: str, org: str = "acme") -> dict:
    return {"S3Object": {"Bucket": f"{org}-cams", "Name": name}}


def _client(deployment, org: str = "acme"):
    return boto_client(deployment["server"].endpoint, deployment["keys"][org], retries=1)


def test_boto3_finds_the_indexed_person_at_the_right_timestamps_and_not_the_other(deployment):
    rek = _client(deployment)
    job_id = rek.start_face_search(Video=_video("door.mp4"), CollectionId="staff", JobTag="front-door")["JobId"]
    done = _wait(rek.get_face_search, job_id)
    assert done["JobStatus"] == "SUCCEEDED", done.get("StatusMessage")
    assert done["JobTag"] == "front-door" and done["Video"] == _video("door.mp4")
    metadata = done["VideoMetadata"]
    assert (metadata["Codec"], metadata["FrameWidth"], metadata["FrameHeight"]) == ("h264", 640, 360)
    assert metadata["DurationMillis"] == 5000 and metadata["FrameRate"] == 10.0
    persons = done["Persons"]
    assert [p["Timestamp"] for p in persons] == DOOR_TIMES  # every sampled frame they are in; the other never
    assert {p["Person"]["Index"] for p in persons} == {0}  # one person throughout, though moving
    for p in persons:
        assert [m["Face"]["FaceId"] for m in p["FaceMatches"]] == [deployment["face_id"]]
        assert p["FaceMatches"][0]["Similarity"] >= 80 and p["FaceMatches"][0]["Face"]["ExternalImageId"] == "bush"
        box = p["Person"]["BoundingBox"]
        assert 0 <= box["Left"] < 0.6 and 0.1 < box["Width"] <= 0.25  # the left of the frame, in a 160-px photo
    lefts = [p["Person"]["BoundingBox"]["Left"] for p in persons]
    assert lefts == sorted(lefts) and lefts[-1] > lefts[0]  # it moved right, as drawn


def test_results_page_and_sort_by_index_or_timestamp(deployment):
    rek = _client(deployment)
    job_id = rek.start_face_detection(Video=_video("door.mp4"))["JobId"]
    done = _wait(rek.get_face_detection, job_id)
    assert done["JobStatus"] == "SUCCEEDED"
    stamps = [f["Timestamp"] for f in done["Faces"]]
    assert stamps == [500, 1000, 1500, 2000, 2000, 2500, 2500, 3000, 3500, 4000]  # two in view from 2 s to 3 s
    assert all(f["Face"]["Confidence"] > 50 and f["Face"]["Landmarks"] for f in done["Faces"])
    pages, token = [], None
    while True:
        page = rek.get_face_detection(JobId=job_id, MaxResults=3, **({"NextToken": token} if token else {}))
        pages.append(page["Faces"])
        token = page.get("NextToken")
        if not token:
            break
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [f for page in pages for f in page] == done["Faces"]

    search = rek.start_face_search(Video=_video("hall.mp4"), CollectionId="staff", FaceMatchThreshold=70)["JobId"]
    by_time = _wait(rek.get_face_search, search)["Persons"]
    by_index = rek.get_face_search(JobId=search, SortBy="INDEX")["Persons"]
    assert [p["Timestamp"] for p in by_time] == sorted(p["Timestamp"] for p in by_time)
    indexes = [p["Person"]["Index"] for p in by_index]
    assert indexes == sorted(indexes)
    assert sorted(json.dumps(p, sort_keys=True) for p in by_time) == sorted(
        json.dumps(p, sort_keys=True) for p in by_index
    )
    with pytest.raises(ClientError) as bad_token:
        rek.get_face_search(JobId=search, NextToken="bm90IGEgdG9rZW4=")
    assert bad_token.value.response["Error"]["Code"] == "InvalidPaginationTokenException"


def test_client_request_tokens_are_idempotent(deployment):
    rek = _client(deployment)
    first = rek.start_face_detection(Video=_video("door.mp4"), ClientRequestToken="door-1")["JobId"]
    assert rek.start_face_detection(Video=_video("door.mp4"), ClientRequestToken="door-1")["JobId"] == first
    with pytest.raises(ClientError) as mismatch:
        rek.start_face_detection(Video=_video("hall.mp4"), ClientRequestToken="door-1")
    assert mismatch.value.response["Error"]["Code"] == "IdempotentParameterMismatchException"
    _wait(rek.get_face_detection, first)


def test_bad_videos_fail_with_a_status_message_and_bad_requests_are_refused(deployment):
    rek = _client(deployment)
    cut = rek.start_face_search(Video=_video("cut.mp4"), CollectionId="staff")["JobId"]
    failed = _wait(rek.get_face_search, cut)
    assert failed["JobStatus"] == "FAILED" and "could not be opened" in failed["StatusMessage"]
    assert failed["Persons"] == []
    avi = rek.start_face_detection(Video=_video("door.avi"))["JobId"]
    wrong_codec = _wait(rek.get_face_detection, avi)
    assert wrong_codec["JobStatus"] == "FAILED" and "H.264" in wrong_codec["StatusMessage"]

    for video in (_video("missing.mp4"), _video("door.mp4", org="metro-police"), _video("../door.mp4")):
        with pytest.raises(ClientError) as refused:
            rek.start_face_search(Video=video, CollectionId="staff")
        assert refused.value.response["Error"]["Code"] == "InvalidS3ObjectException"
    with pytest.raises(ClientError) as no_collection:
        rek.start_face_search(Video=_video("door.mp4"), CollectionId="nobody")
    assert no_collection.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as unknown:
        rek.get_face_search(JobId="0" * 64)
    assert unknown.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as wrong_api:
        rek.get_face_search(JobId=avi)  # a face detection job is not a face search
    assert wrong_api.value.response["Error"]["Code"] == "ResourceNotFoundException"
    police = _client(deployment, "metro-police")
    with pytest.raises(ClientError) as others:
        police.get_face_detection(JobId=avi)  # another organisation's job: as if it did not exist
    assert others.value.response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as channel:
        rek.start_face_detection(
            Video=_video("door.mp4"), NotificationChannel={"SNSTopicArn": TOPIC + "-unknown", "RoleArn": ROLE}
        )
    assert channel.value.response["Error"]["Code"] == "InvalidParameterException"


def test_the_moratorium_denies_a_police_face_search_at_start_and_the_denial_is_audited(deployment):
    home = deployment["home"]
    run_facegate(home, "policies", "activate", MORATORIUM, "--reason", "police use suspended")
    run_facegate(home, "policies", "extend", MORATORIUM, "--until", "forever", "--reason", "until further notice")
    try:
        police = _client(deployment, "metro-police")
        police.create_collection(CollectionId="suspects")
        with pytest.raises(ClientError) as denied:
            police.start_face_search(Video=_video("door.mp4", "metro-police"), CollectionId="suspects")
        assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
        assert MORATORIUM in denied.value.response["Error"]["Message"]
        # Detection is not identification: the moratorium leaves it.
        job = police.start_face_detection(Video=_video("door.mp4", "metro-police"))["JobId"]
        assert _wait(police.get_face_detection, job)["JobStatus"] == "SUCCEEDED"
    finally:
        run_facegate(home, "policies", "deactivate", MORATORIUM, "--reason", "test over")
    records = [json.loads(line) for line in run_facegate(home, "audit", "show", "--json").splitlines()]
    denials = [r for r in records if r.get("operation") == "StartFaceSearch" and r.get("decision") == "deny"]
    assert denials and denials[-1]["organisation"] == "metro-police"
    assert denials[-1]["video"] == _video("door.mp4", "metro-police")


def test_every_match_is_audited_with_face_ids_similarities_and_timestamps(deployment):
    rek = _client(deployment)
    job_id = rek.start_face_search(Video=_video("door.mp4"), CollectionId="staff")["JobId"]
    _wait(rek.get_face_search, job_id)
    records = [json.loads(line) for line in run_facegate(deployment["home"], "audit", "show", "--json").splitlines()]
    batches = [r for r in records if r.get("event") == "video-batch" and r.get("job_id") == job_id]
    assert batches and all(r["decision"] == "allow" for r in batches)
    matches = [m for r in batches for m in r["matches"]]
    assert [m["timestamp_ms"] for m in matches] == DOOR_TIMES
    assert all(m["face_ids"] == [deployment["face_id"]] and m["similarities"][0] >= 80 for m in matches)
    ended = [r for r in records if r.get("event") == "video-job-finished" and r.get("job_id") == job_id]
    assert [r["job_status"] for r in ended] == ["SUCCEEDED"]


def test_a_webhook_receives_rekognitions_completion_message(deployment):
    received: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{hook.server_port}/rekognition"
        run_facegate(
            deployment["home"], "notifications", "add", TOPIC, "--org", "acme", "--url", url, "--reason", "ops"
        )
        rek = _client(deployment)
        job_id = rek.start_face_search(
            Video=_video("door.mp4"),
            CollectionId="staff",
            JobTag="door-notify",
            NotificationChannel={"SNSTopicArn": TOPIC, "RoleArn": ROLE},
        )["JobId"]
        _wait(rek.get_face_search, job_id)
        for _ in range(100):
            if received:
                break
            time.sleep(0.1)
    finally:
        hook.shutdown()
    assert len(received) == 1 and received[0]["Type"] == "Notification" and received[0]["TopicArn"] == TOPIC
    message = json.loads(received[0]["Message"])
    assert message["JobId"] == job_id and message["Status"] == "SUCCEEDED" and message["API"] == "StartFaceSearch"
    assert message["JobTag"] == "door-notify"
    assert message["Video"] == {"S3ObjectName": "door.mp4", "S3Bucket": "acme-cams"}


def test_a_job_survives_its_server_being_killed(deployment):
    server, home = deployment["server"], deployment["home"]
    rek = _client(deployment)
    job_id = rek.start_face_search(Video=_video("hall.mp4"), CollectionId="staff")["JobId"]
    shown = {}
    for _ in range(1200):
        shown = json.loads(run_facegate(home, "jobs", "show", job_id, "--org", "acme"))
        if shown["ProgressMillis"] > 0 or shown["JobStatus"] != "IN_PROGRESS":
            break
        time.sleep(0.05)
    assert shown["JobStatus"] == "IN_PROGRESS" and 0 < shown["ProgressMillis"] < 40_000, shown
    server.kill()  # SIGKILL: no shutdown handler runs, the job is left IN_PROGRESS with a dead worker
    assert json.loads(run_facegate(home, "jobs", "show", job_id, "--org", "acme"))["JobStatus"] == "IN_PROGRESS"
    server.start()
    rek = _client(deployment)
    done = _wait(rek.get_face_search, job_id)
    assert done["JobStatus"] == "SUCCEEDED"
    stamps = [p["Timestamp"] for p in done["Persons"]]
    assert stamps == sorted(set(stamps)) and len(stamps) >= 70  # analysed again from the start, once each
    assert json.loads(run_facegate(home, "jobs", "show", job_id, "--org", "acme"))["Attempts"] == 2


def test_video_file_checks_and_samples(clips):
    with VideoFile(clips / "door.mp4") as video:
        assert video.metadata.duration_ms == 5000 and video.metadata.format == "QuickTime / MOV"
        frames = list(video.frames(1000))
    assert [t for t, _ in frames] == [0, 1000, 2000, 3000, 4000]
    assert frames[0][1].shape == (360, 640, 3)
    with pytest.raises(VideoError, match="H.264"):
        VideoFile(clips / "door.avi")
    with pytest.raises(VideoError, match="could not be opened"):
        VideoFile(clips / "cut.mp4")
    (clips / "not-a-video.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    with pytest.raises(VideoError):
        VideoFile(clips / "not-a-video.mp4")


def test_revocation_stops_a_running_job_at_its_next_batch(tmp_path, clips, people):
    from facegate.compose import Settings, build
    from facegate.keys import Principal

    facegate = build(Settings(tmp_path / "data"))
    try:
        facegate.governance.create_organisation("acme", "commercial", "US-NY")
        operator = Principal.operator("acme")
        governed = facegate.governed
        governed.execute(operator, "CreateCollection", {"CollectionId": "staff"})
        governed.execute(
            operator,
            "IndexFaces",
            {"CollectionId": "staff", "Image": {"Bytes": people["George_W_Bush"][1].read_bytes()}},
        )
        started = governed.execute(
            operator, "StartFaceSearch", {"Video": {"File": str(clips / "hall.mp4")}, "CollectionId": "staff"}
        ).result
        batches = []

        def revoke_after_the_first_batch(job, done_ms):
            batches.append(done_ms)
            if len(batches) == 1:
                facegate.governance.set_organisation_status("acme", "revoked", "licence withdrawn")

        job = facegate.jobs.run(started.job_id, "acme", progress=revoke_after_the_first_batch)
        assert job.status == "FAILED" and "AccessDeniedException" in job.status_message
        assert "revocation" in job.status_message
        assert len(batches) == 1  # stopped at the very next batch
        denied = list(facegate.audit.entries(event="video-batch", decision="deny"))
        assert len(denied) == 1 and denied[0]["job_id"] == started.job_id
    finally:
        facegate.close()


def test_the_cli_searches_a_local_video(tmp_path, clips, people):
    home = tmp_path / "data"
    run_facegate(home, "collections", "create", "staff")
    run_facegate(home, "index", str(people["George_W_Bush"][1]), "-c", "staff")
    response = json.loads(run_facegate(home, "video", "search", str(clips / "door.mp4"), "-c", "staff", "--json"))
    assert response["JobStatus"] == "SUCCEEDED"
    assert [p["Timestamp"] for p in response["Persons"]] == DOOR_TIMES
    summary = run_facegate(home, "video", "search", str(clips / "door.mp4"), "-c", "staff")
    assert "1 persons matched" in summary and "0:00:00.500" in summary and "0:00:02.500" in summary
    detected = run_facegate(home, "video", "detect", str(clips / "door.mp4"))
    assert "10 faces at 8 of the sampled timestamps" in detected
    env = {**os.environ, "FACEGATE_HOME": str(home)}
    failed = subprocess.run(
        [sys.executable, "-m", "facegate", "video", "search", str(clips / "cut.mp4"), "-c", "staff"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert failed.returncode != 0 and "could not be opened" in failed.stderr
    listed = json.loads(run_facegate(home, "jobs", "list", "--json"))
    assert [j["JobStatus"] for j in listed] == ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]


@pytest.fixture
def s3_cams(clips):
    """A local S3-compatible server (moto's server mode) holding door.mp4: the code under test is facegate's S3
    client downloading a video with the source's credentials."""
    moto_server = pytest.importorskip("moto.server", reason="moto is not installed: pip install -e '.[test]'")
    import boto3

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="AKIDCAMS",
        aws_secret_access_key="cams-secret-0123456789",
    )  # fmt: skip
    s3.create_bucket(Bucket="doorbell-footage")
    s3.put_object(Bucket="doorbell-footage", Key="2020/06/door.mp4", Body=(clips / "door.mp4").read_bytes())
    yield endpoint
    server.stop()


def test_jobs_read_videos_from_s3_sources_and_the_limits_hold(tmp_path, clips, people, s3_cams, monkeypatch):
    import hashlib

    from facegate import service as service_module
    from facegate.compose import Settings, build
    from facegate.errors import InvalidS3ObjectException, LimitExceededException, VideoTooLargeException
    from facegate.keys import Principal
    from facegate.sources import s3_source

    facegate = build(Settings(tmp_path / "data"))
    try:
        governance, governed = facegate.governance, facegate.governed
        governance.create_organisation("acme", "commercial", "US-NY")
        source = s3_source(
            "acme", "doorbell", s3_cams, bucket="doorbell-footage", region="us-east-1", access_key_id="AKIDCAMS",
            secret_access_key="cams-secret-0123456789", sealer=facegate.keys,
        )  # fmt: skip
        governance.add_source(source, "pilot")
        operator = Principal.operator("acme")
        governed.execute(operator, "CreateCollection", {"CollectionId": "staff"})
        face = {"Bytes": people["George_W_Bush"][1].read_bytes()}
        governed.execute(operator, "IndexFaces", {"CollectionId": "staff", "Image": face})
        digest = hashlib.sha256((clips / "door.mp4").read_bytes()).hexdigest()
        video = {"S3Object": {"Bucket": "doorbell", "Name": "2020/06/door.mp4", "Version": digest}}
        started = governed.execute(operator, "StartFaceSearch", {"Video": video, "CollectionId": "staff"}).result
        job = facegate.jobs.run(started.job_id, "acme")
        assert job.status == "SUCCEEDED", job.status_message
        found = governed.execute(operator, "GetFaceSearch", {"JobId": started.job_id}).result
        assert [p.timestamp_ms for p in found.persons] == DOOR_TIMES
        assert not list((tmp_path / "data" / "video-scratch").iterdir())  # the downloaded copy is gone

        wrong = {"S3Object": {**video["S3Object"], "Version": "0" * 64}}
        started = governed.execute(operator, "StartFaceDetection", {"Video": wrong}).result
        job = facegate.jobs.run(started.job_id, "acme")
        assert job.status == "FAILED" and "not this object's SHA-256" in job.status_message
        with pytest.raises(InvalidS3ObjectException):
            governed.execute(
                operator, "StartFaceDetection", {"Video": {"S3Object": {"Bucket": "doorbell", "Name": "x"}}}
            )

        monkeypatch.setattr(service_module, "MAX_VIDEO_BYTES", 1000)
        with pytest.raises(VideoTooLargeException, match="at most 1,000"):
            governed.execute(operator, "StartFaceDetection", {"Video": video})
        monkeypatch.setattr(service_module, "MAX_VIDEO_BYTES", 10 * 1024**3)
        monkeypatch.setattr(service_module, "MAX_JOBS_IN_PROGRESS", 2)
        started = [  # nothing runs them: they stay in progress
            governed.execute(operator, "StartFaceDetection", {"Video": video, "ClientRequestToken": f"t{i}"}).result
            for i in range(2)
        ]
        with pytest.raises(LimitExceededException, match="2 video jobs in progress"):
            governed.execute(operator, "StartFaceDetection", {"Video": video})
        repeat = governed.execute(operator, "StartFaceDetection", {"Video": video, "ClientRequestToken": "t1"})
        assert repeat.result.job_id == started[1].job_id  # the same job again, not a new one over the limit
    finally:
        facegate.close()


def test_a_video_over_six_hours_is_refused_at_start(tmp_path, clips, monkeypatch):
    from facegate.compose import Settings, build
    from facegate.engine import video as video_limits
    from facegate.errors import VideoTooLargeException
    from facegate.keys import Principal
    from facegate.sources import directory_source

    facegate = build(Settings(tmp_path / "data"))
    try:
        facegate.governance.add_source(directory_source("default", "cams", clips), "test")
        monkeypatch.setattr(video_limits, "MAX_VIDEO_MS", 4000)  # the 5-s clip stands for a 7-hour one
        operator = Principal.operator("default")
        for video in ({"File": str(clips / "door.mp4")}, {"S3Object": {"Bucket": "cams", "Name": "door.mp4"}}):
            with pytest.raises(VideoTooLargeException, match="hours long"):
                facegate.governed.execute(operator, "StartFaceDetection", {"Video": video})
        assert facegate.store.list_jobs() == []
    finally:
        facegate.close()


def test_an_interrupted_cli_run_fails_its_job_instead_of_leaving_it_in_progress(tmp_path, clips, people):
    home = tmp_path / "data"
    run_facegate(home, "collections", "create", "staff")
    env = {**os.environ, "FACEGATE_HOME": str(home)}
    # As an operator's Ctrl-C reaches a command run in a terminal: a shell's background job (how a CI script may
    # run) starts with SIGINT ignored, which Python, and so the CLI, keeps.
    command = ["video", "search", str(clips / "hall.mp4"), "-c", "staff"]
    foreground = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"sys.argv = ['facegate', *{command!r}]; runpy.run_module('facegate', run_name='__main__')"
    )
    cli = subprocess.Popen(
        [sys.executable, "-c", foreground],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for _ in range(1200):  # until the analysis is under way (a guard against hanging, not a speed check)
            listed = json.loads(run_facegate(home, "jobs", "list", "--json"))
            if listed and listed[0]["ProgressMillis"] > 0:
                break
            time.sleep(0.05)
        cli.send_signal(signal.SIGINT)
        _, stderr = cli.communicate(timeout=120)
    finally:
        cli.kill()
    assert cli.returncode != 0 and "interrupted" in stderr
    job = json.loads(run_facegate(home, "jobs", "list", "--json"))[0]
    assert job["JobStatus"] == "FAILED" and "interrupted" in job["StatusMessage"]
