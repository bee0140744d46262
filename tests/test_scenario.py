"""June 2020, replayed against a running server with boto3: the police moratorium, its exemptions, its
extension "until further notice", revocation, and the audit log that shows all of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError

from .test_http import REGION, boto_client, running_server
from .test_policy import synthetic_report

MORATORIUM = "amazon-2020-police-moratorium"
EXEMPT = "amazon-2020-moratorium-exempt"


class Facegate:
    """The operator's command line on the server's data directory."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "FACEGATE_HOME": str(self.home), "COLUMNS": "200"}
        result = subprocess.run([sys.executable, "-m", "facegate", *args], capture_output=True, text=True, env=env)
        if ok:
            assert result.returncode == 0, result.stderr
        return result

    def json(self, *args: str):
        return json.loads(self(*args, "--json").stdout)


def rekognition(endpoint: str, key: dict, case: str | None = None):
    client = boto_client(endpoint, key, retries=1)
    if case is not None:

        def add_case(request, **_):
            request.headers["X-Facegate-Case"] = case

        client.meta.events.register("before-sign.rekognition.*", add_case)
    return client


def denied(call) -> str:
    with pytest.raises(ClientError) as info:
        call()
    assert info.value.response["Error"]["Code"] == "AccessDeniedException", info.value.response
    return info.value.response["Error"]["Message"]


@pytest.fixture
def world(tmp_path, people):
    """Four organisations with use cases, keys and collections, and a server whose clock the test sets."""
    home = tmp_path / "data"
    clock = tmp_path / "clock"
    clock.write_text("2020-06-01")
    fg = Facegate(home)
    fg("orgs", "create", "seattle-pd", "--category", "law_enforcement", "--jurisdiction", "US-WA")
    fg("orgs", "create", "thorn", "--category", "ngo", "--jurisdiction", "US-CA", "--group", EXEMPT)
    fg("orgs", "create", "marinus", "--category", "ngo", "--jurisdiction", "US-PA", "--group", EXEMPT)
    fg("orgs", "create", "acme", "--category", "commercial", "--jurisdiction", "US-NY")
    use_cases = {
        "police": ("seattle-pd", "criminal_investigation"),
        "thorn": ("thorn", "missing_children"),
        "thorn-research": ("thorn", "research"),
        "marinus": ("marinus", "human_trafficking"),
        "acme": ("acme", "identity_verification"),
    }
    keys = {}
    for name, (org, purpose) in use_cases.items():
        use_case = fg.json("usecases", "create", "--org", org, "--purpose", purpose, "--approver", "trust-and-safety")
        keys[name] = fg.json("keys", "create", "--usecase", use_case["UseCaseId"])
    os.environ["FACEGATE_CLOCK_FILE"] = str(clock)
    try:
        with running_server(home) as endpoint:
            probe = people["Tony_Blair"][3].read_bytes()
            for name, key in keys.items():
                client = rekognition(endpoint, key)
                collection = f"{name}-gallery"
                client.create_collection(CollectionId=collection)
                for path in people["Tony_Blair"][:3] + people["Colin_Powell"][:2]:
                    client.index_faces(CollectionId=collection, Image={"Bytes": path.read_bytes()})

            def search(name: str, case: str | None = None):
                client = rekognition(endpoint, keys[name], case)
                return client.search_faces_by_image(CollectionId=f"{name}-gallery", Image={"Bytes": probe})

            yield {"fg": fg, "clock": clock, "keys": keys, "endpoint": endpoint, "search": search, "home": home}
    finally:
        del os.environ["FACEGATE_CLOCK_FILE"]


def test_june_2020(world):
    fg, clock, search = world["fg"], world["clock"], world["search"]

    # Before 10 June 2020 the police search works.
    assert search("police")["FaceMatches"]

    fg("policies", "activate", MORATORIUM, "--reason", "Amazon suspends police use for one year")
    clock.write_text("2020-06-11")
    message = denied(lambda: search("police"))  # the same key, issued before the moratorium
    assert MORATORIUM in message and "2020-06-10" in message and "until 2021-06-10" in message

    # The exempt organisations keep searching for their exempt purposes; not for anything else.
    assert search("thorn")["FaceMatches"]
    assert search("marinus")["FaceMatches"]
    assert MORATORIUM in denied(lambda: search("thorn-research"))
    assert search("acme")["FaceMatches"]  # the moratorium does not concern commercial identity verification

    # A year on, the moratorium would have lapsed; extended until further notice, it holds.
    fg("policies", "extend", MORATORIUM, "--until", "forever", "--reason", "extended until further notice")
    clock.write_text("2021-07-01")
    assert "until further notice" in denied(lambda: search("police"))

    # Revoking an organisation takes effect on its next call.
    fg("orgs", "revoke", "marinus", "--reason", "contract ended")
    assert "revocation" in denied(lambda: search("marinus"))
    assert search("thorn")["FaceMatches"]

    # The log verifies and shows all of it.
    verified = fg("audit", "verify")
    assert verified.returncode == 0
    denials = [
        json.loads(line)
        for line in fg("audit", "show", "--org", "seattle-pd", "--decision", "deny", "--json").stdout.splitlines()
    ]
    assert len(denials) == 2 and all(MORATORIUM in d["policies"] for d in denials)
    changes = [json.loads(line) for line in fg("audit", "export").stdout.splitlines()]
    events = [c["entry"].get("event") for c in changes if c.get("kind") == "entry"]
    assert events.count("policy_change") == 2 and "revocation" in events
    allowed_thorn = [
        json.loads(line)
        for line in fg("audit", "show", "--org", "thorn", "--decision", "allow", "--json").stdout.splitlines()
    ]
    searches = [r for r in allowed_thorn if r["operation"] == "SearchFacesByImage"]
    assert searches and all(r["purpose"] == "missing_children" and r["matches"] for r in searches)
    assert all(len(r["image_sha256"][0]) == 64 for r in searches)

    # The transparency report counts it.
    fg(
        "report",
        "transparency",
        "--from",
        "2020-01-01",
        "--to",
        "2030-01-01",
        "--out",
        str(world["home"].parent / "report"),
    )
    report = json.loads((world["home"].parent / "report" / "transparency.json").read_text())
    assert report["denials_by_policy"][MORATORIUM] == 3  # police twice, Thorn's research use case once
    assert report["denials_by_policy"]["revocation"] == 1
    assert report["by_category"]["law_enforcement"]["deny"] == 2
    assert report["by_purpose"]["missing_children"]["allow"] >= 2
    assert [e["change"] for e in report["governance_events"] if e["event"] == "policy_change"] == [
        "activated",
        "activated",
    ]
    assert any(e["event"] == "revocation" and e["organisation"] == "marinus" for e in report["governance_events"])
    html_report = (world["home"].parent / "report" / "transparency.html").read_text()
    assert html_report.count("data:image/png;base64,") == 3


def test_public_safety_obligations_raise_the_threshold(world):
    fg, search = world["fg"], world["search"]
    fg("policies", "activate", "aws-public-safety", "--reason", "public-safety guidance")
    assert "case reference" in denied(lambda: search("police"))
    response = search("police", case="CASE-2020-0042")
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-facegate-threshold-applied"] == "99"
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-facegate-human-review"] == "1"
    assert all(match["Similarity"] >= 99 for match in response["FaceMatches"])
    # The commercial customer's default threshold is untouched.
    assert world["search"]("acme")["ResponseMetadata"]["HTTPHeaders"].get("x-facegate-threshold-applied") == "80"
    records = [
        json.loads(line)
        for line in fg("audit", "show", "--org", "seattle-pd", "--decision", "allow", "--json").stdout.splitlines()
    ]
    last = [r for r in records if r["operation"] == "SearchFacesByImage"][-1]
    assert last["threshold_requested"] is None or last["threshold_requested"] == 80
    assert last["threshold_applied"] == 99 and last["case_reference"] == "CASE-2020-0042"
    assert last["human_review_required"] is True


def test_fairness_audit_limits_police_search_by_gallery_size(world, tmp_path):
    fg, search = world["fg"], world["search"]
    report = tmp_path / "audit.json"
    report.write_text(json.dumps(synthetic_report(worse_factor=1e6)))  # worst group: FMR 1.6e-4 at 99
    fg("fairness", "activate", str(report), "--reason", "audit of record")
    assert "worst group" in fg("fairness", "show").stdout
    fg("policies", "activate", "aws-public-safety", "--set", "max_worst_group_fmr=0.01", "--reason", "guidance")
    allowed = search("police", case="CASE-7")
    headers = allowed["ResponseMetadata"]["HTTPHeaders"]
    assert float(headers["x-facegate-expected-false-candidates"]) == pytest.approx(5 * 10 ** (6 - 49 / 5), rel=1e-3)
    fg(
        "policies",
        "activate",
        "aws-public-safety",
        "--set",
        "max_expected_false_candidates=0.0005",
        "--reason",
        "stricter",
    )
    message = denied(lambda: search("police", case="CASE-7"))
    assert "aws-public-safety/gallery-size" in message and "(5 faces)" in message and "group=B" in message
    assert search("acme")["FaceMatches"]  # the public-safety rule is for law enforcement only
    records = [json.loads(line) for line in fg("audit", "show", "--org", "seattle-pd", "--json").stdout.splitlines()]
    last = [r for r in records if r.get("operation") == "SearchFacesByImage"][-1]
    assert (
        last["decision"] == "deny" and last["worst_group"] == "group=B" and last["expected_false_candidates"] > 0.0005
    )


def test_revocation_while_requests_are_in_flight(world):
    """Requests that start after `keys revoke` has returned are all refused; none slips through."""
    fg, keys = world["fg"], world["keys"]
    stop = threading.Event()
    revoked_at: list[float] = []
    log: list[tuple[float, str]] = []

    def hammer():
        while not stop.is_set():
            started = time.monotonic()
            try:
                rekognition(world["endpoint"], keys["acme"]).list_faces(CollectionId="acme-gallery")
                outcome = "OK"
            except ClientError as exc:
                outcome = exc.response["Error"]["Code"]
            log.append((started, outcome))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(hammer) for _ in range(4)]
        time.sleep(1.0)
        revoke_started = time.monotonic()
        fg("keys", "revoke", keys["acme"]["AccessKeyId"], "--reason", "key leaked")
        revoked_at.append(time.monotonic())
        time.sleep(1.0)
        stop.set()
        for future in futures:
            future.result()
    assert "OK" in [o for t, o in log if t < revoke_started]  # the key worked while in use
    after = [o for t, o in log if t > revoked_at[0]]
    assert after and set(after) == {"AccessDeniedException"}
    assert httpx.get(world["endpoint"] + "/healthz").status_code == 200


def admin_call(endpoint: str, key: dict, method: str, path: str, payload: dict | None = None) -> httpx.Response:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    body = json.dumps(payload).encode() if payload is not None else b""
    request = AWSRequest(method=method, url=endpoint + path, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(key["AccessKeyId"], key["SecretAccessKey"]), "facegate-admin", REGION).add_auth(request)
    return httpx.request(method, endpoint + path, content=body, headers=dict(request.headers))


def test_admin_api(world):
    fg, endpoint = world["fg"], world["endpoint"]
    admin = fg.json("keys", "create", "--org", "operators")
    # A client key is not an administrator.
    refused = admin_call(endpoint, admin, "POST", "/admin/organisations", {"Name": "x", "Category": "ngo"})
    assert refused.status_code == 403 and refused.json()["__type"] == "AccessDeniedException"

    from facegate.audit import AuditLog
    from facegate.governance import Governance
    from facegate.keys import KeyRing
    from facegate.store.sqlite import SqliteStore

    store = SqliteStore(world["home"])
    admin_key = (
        Governance(store, KeyRing(store, world["home"]), AuditLog(world["home"]))
        .issue_key(organisation="operators", role="admin")
        .to_json()
    )
    store.close()

    created = admin_call(endpoint, admin_key, "POST", "/admin/organisations", {"Name": "icmec", "Category": "ngo"})
    assert created.status_code == 200, created.text
    use_case = admin_call(
        endpoint, admin_key, "POST", "/admin/usecases", {"Organisation": "icmec", "Purpose": "missing_children"}
    ).json()
    key = admin_call(endpoint, admin_key, "POST", "/admin/keys", {"UseCaseId": use_case["UseCaseId"]}).json()
    client = rekognition(endpoint, key)
    client.create_collection(CollectionId="icmec-gallery")
    activated = admin_call(endpoint, admin_key, "POST", "/admin/policies/kill-switch/activate", {"Reason": "drill"})
    assert activated.json()["Active"] is True
    # Denied before the image is even decoded: these bytes are not an image.
    junk = {"Bytes": b"not an image: the gate decides first"}
    assert "kill-switch" in denied(lambda: client.search_faces_by_image(CollectionId="icmec-gallery", Image=junk))
    admin_call(endpoint, admin_key, "POST", "/admin/policies/kill-switch/deactivate", {"Reason": "drill over"})
    revoked = admin_call(endpoint, admin_key, "POST", f"/admin/keys/{key['AccessKeyId']}/revoke", {"Reason": "done"})
    assert revoked.status_code == 200
    assert "revocation" in denied(lambda: client.list_collections())
    head = admin_call(endpoint, admin_key, "POST", "/admin/audit/checkpoint").json()
    assert head["size"] > 0 and head["signature"]
    templates = admin_call(endpoint, admin_key, "GET", "/admin/policies")
    assert templates.status_code == 200 and any(t["Template"] == MORATORIUM for t in templates.json()["Templates"])
