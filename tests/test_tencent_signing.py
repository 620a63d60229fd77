"""TC3 and v1 signature checks against the spec's vectors (B.6) and the official Python SDK.

The SDK runs its real request-building and signing code; only its HTTP transport (a `requests`
adapter) is replaced, so the test sees exactly the bytes that would go on the wire.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import io
import json
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import urllib3
from tencentcloud.common import abstract_client
from tencentcloud.common.credential import Credential
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.trtc.v20190722 import models, trtc_client

from cloudrec.dialects.tencent.errors import TencentError
from cloudrec.dialects.tencent.signing import (
    Authenticated,
    IncomingRequest,
    canonical_request,
    sign_tc3,
    sign_v1,
    tc3_signature,
    v1_string_to_sign,
    verify_tc3,
    verify_v1,
)

SECRET_ID = "AKIDEXAMPLE"
SECRET_KEY = "SECRETEXAMPLE"
ENDPOINT = "127.0.0.1:8080"
TS = 1700000000
BODY = b'{"SdkAppId": 1400000001, "TaskId": "task-abc"}'
POST_SIG = "e7c5ce00833799fe515f73545ac0ce479ea88c9a79f7f63161162e387ddef788"
GET_SIG = "dee623e2a03d7dc4f1706fd8fba68390d75f27d4835b3e212880326bd89b1abf"
V1_STRING = (
    "POST127.0.0.1:8080/?Action=DescribeCloudRecording&Language=zh-CN&Nonce=12345&Region=ap-guangzhou"
    "&RequestClient=SDK_PYTHON_3.1.195&SdkAppId=1400000001&SecretId=AKIDEXAMPLE"
    "&SignatureMethod=HmacSHA256&TaskId=task-abc&Timestamp=1700000000&Version=2019-07-22"
)
V1_SIG = "ZY/KzecyTtzbGDtoD8eUPt9vIEFBnaJUwHcm14QU5qk="


def lookup(secret_id: str) -> str | None:
    return SECRET_KEY if secret_id == SECRET_ID else None


def post_request(**headers: str) -> IncomingRequest:
    base = {"content-type": "application/json", "host": ENDPOINT, "x-tc-timestamp": str(TS)}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return IncomingRequest(method="POST", host=ENDPOINT, headers=base, query_string="", body=BODY)


def signed(req: IncomingRequest, **kw: Any) -> IncomingRequest:
    args: dict[str, Any] = {"secret_id": SECRET_ID, "secret_key": SECRET_KEY, "service": "trtc"}
    args.update(kw)
    auth = sign_tc3(req, **args)
    return dataclasses.replace(req, headers={**req.headers, "authorization": auth})


def with_header(req: IncomingRequest, name: str, value: str | None) -> IncomingRequest:
    headers = {k: v for k, v in req.headers.items() if k != name}
    if value is not None:
        headers[name] = value
    return dataclasses.replace(req, headers=headers)


def code_of(exc: pytest.ExceptionInfo[TencentError]) -> str:
    return exc.value.code


# ---------------------------------------------------------------------------------------------
# spec vectors (B.6)


def test_tc3_post_vector() -> None:
    req = signed(post_request())
    assert req.headers["authorization"] == (
        "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/trtc/tc3_request, "
        f"SignedHeaders=content-type;host, Signature={POST_SIG}"
    )
    assert verify_tc3(req, lookup, now=TS) == Authenticated(
        secret_id=SECRET_ID, method="TC3-HMAC-SHA256", service="trtc", token=None
    )


def test_tc3_get_vector() -> None:
    req = IncomingRequest(
        method="GET",
        host=ENDPOINT,
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "host": ENDPOINT,
            "x-tc-timestamp": str(TS),
            "authorization": "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/trtc/tc3_request, "
            f"SignedHeaders=content-type;host, Signature={GET_SIG}",
        },
        query_string="SdkAppId=1400000001&TaskId=task-abc",
        body=b"",
    )
    assert verify_tc3(req, lookup, now=TS).secret_id == SECRET_ID
    # The raw query is signed as sent: reordering it breaks the signature.
    reordered = dataclasses.replace(req, query_string="TaskId=task-abc&SdkAppId=1400000001")
    with pytest.raises(TencentError) as exc:
        verify_tc3(reordered, lookup, now=TS)
    assert code_of(exc) == "AuthFailure.SignatureFailure"


def test_v1_vector() -> None:
    params = dict(parse_qsl(V1_STRING.split("?", 1)[1]))
    assert v1_string_to_sign("POST", ENDPOINT, params) == V1_STRING
    assert sign_v1("POST", ENDPOINT, params, SECRET_KEY) == V1_SIG
    auth = verify_v1("POST", ENDPOINT, {**params, "Signature": V1_SIG}, lookup, now=TS)
    assert auth == Authenticated(secret_id=SECRET_ID, method="HmacSHA256", service=None, token=None)


def test_tencent_documentation_vector_canonical_request() -> None:
    payload = rb'{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}'
    payload_hash = hashlib.sha256(payload).hexdigest()
    assert payload_hash == "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
    canonical = canonical_request(
        method="POST",
        query_string="",
        headers=[
            ("content-type", "application/json; charset=utf-8"),
            ("host", "cvm.tencentcloudapi.com"),
            ("x-tc-action", "describeinstances"),
        ],
        payload_hash=payload_hash,
    )
    assert (
        hashlib.sha256(canonical.encode()).hexdigest()
        == "7019a55be8395899b900fb5564e4200d984910f34794a27cb3fb7d10ff6a1e84"
    )


# ---------------------------------------------------------------------------------------------
# the official SDK, captured at its HTTP transport


class CapturingAdapter(requests.adapters.HTTPAdapter):
    """Replaces the network under the SDK's `requests.Session`; answers a DescribeCloudRecording."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent.append(request)
        body = json.dumps(
            {"Response": {"TaskId": "task-abc", "Status": "Idle", "StorageFileList": [], "RequestId": "r-1"}}
        ).encode()
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(body),
            headers={"Content-Type": "application/json"},
            status=200,
            preload_content=False,
        )
        return self.build_response(request, raw)


def sdk_client(
    *, sign_method: str | None = None, req_method: str = "POST", token: str | None = None, unsigned: bool = False
) -> tuple[trtc_client.TrtcClient, CapturingAdapter]:
    profile = ClientProfile(
        signMethod=sign_method,
        httpProfile=HttpProfile(endpoint=ENDPOINT, protocol="http", reqMethod=req_method),
    )
    profile.unsignedPayload = unsigned
    client = trtc_client.TrtcClient(Credential(SECRET_ID, SECRET_KEY, token), "ap-guangzhou", profile)
    adapter = CapturingAdapter()
    client.request.conn._session.mount("http://", adapter)
    return client, adapter


def describe(client: trtc_client.TrtcClient) -> None:
    req = models.DescribeCloudRecordingRequest()
    req.SdkAppId = 1400000001
    req.TaskId = "task-abc"
    client.DescribeCloudRecording(req)


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def body_bytes(sent: requests.PreparedRequest) -> bytes:
    body = sent.body or b""
    assert isinstance(body, (str, bytes))  # the SDK sends a str; requests keeps it as given
    return body.encode() if isinstance(body, str) else body


def as_incoming(sent: requests.PreparedRequest) -> IncomingRequest:
    url = urlsplit(sent.url or "")
    return IncomingRequest(
        method=sent.method or "",
        host=url.netloc,
        headers={k.lower(): text(v) for k, v in sent.headers.items()},
        query_string=url.query,
        body=body_bytes(sent),
    )


def v1_params(sent: requests.PreparedRequest) -> dict[str, str]:
    if sent.method == "GET":
        query = urlsplit(sent.url or "").query
    else:
        query = body_bytes(sent).decode()
    return dict(parse_qsl(query, keep_blank_values=True))


@pytest.fixture
def fixed_clock() -> Iterator[None]:
    # The SDK reads the clock and the nonce through its module globals; pin them to the B.6 inputs.
    with (
        mock.patch.object(abstract_client, "time", SimpleNamespace(time=lambda: TS)),
        mock.patch.object(abstract_client, "random", SimpleNamespace(randint=lambda a, b: 12345)),
    ):
        yield


@pytest.mark.parametrize(("req_method", "expected"), [("POST", POST_SIG), ("GET", GET_SIG)])
def test_sdk_tc3_reproduces_vectors(fixed_clock: None, req_method: str, expected: str) -> None:
    client, adapter = sdk_client(req_method=req_method)
    describe(client)
    incoming = as_incoming(adapter.sent[0])
    assert incoming.headers["authorization"].endswith(f"Signature={expected}")
    assert verify_tc3(incoming, lookup, now=TS).service == "trtc"


def test_sdk_v1_reproduces_vector(fixed_clock: None) -> None:
    client, adapter = sdk_client(sign_method="HmacSHA256")
    client.request_client = "SDK_PYTHON_3.1.195"  # the spec vector was made with that SDK version
    describe(client)
    params = v1_params(adapter.sent[0])
    assert params["Signature"] == V1_SIG
    assert verify_v1("POST", ENDPOINT, params, lookup, now=TS).method == "HmacSHA256"


@pytest.mark.parametrize("req_method", ["POST", "GET"])
def test_sdk_tc3_live_clock(req_method: str) -> None:
    client, adapter = sdk_client(req_method=req_method, token="tok-1")
    describe(client)
    incoming = as_incoming(adapter.sent[0])
    auth = verify_tc3(incoming, lookup, now=time.time())
    assert auth == Authenticated(secret_id=SECRET_ID, method="TC3-HMAC-SHA256", service="trtc", token="tok-1")
    if req_method == "GET":
        assert incoming.query_string and not incoming.body


@pytest.mark.parametrize("sign_method", ["HmacSHA1", "HmacSHA256"])
@pytest.mark.parametrize("req_method", ["POST", "GET"])
def test_sdk_v1(sign_method: str, req_method: str) -> None:
    client, adapter = sdk_client(sign_method=sign_method, req_method=req_method, token="tok-2")
    describe(client)
    sent = adapter.sent[0]
    params = v1_params(sent)
    host = text(sent.headers["Host"])
    auth = verify_v1(req_method, host, params, lookup, now=time.time())
    assert auth == Authenticated(secret_id=SECRET_ID, method=sign_method, service=None, token="tok-2")
    tampered = {**params, "TaskId": "task-other"}
    with pytest.raises(TencentError) as exc:
        verify_v1(req_method, host, tampered, lookup, now=time.time())
    assert code_of(exc) == "AuthFailure.SignatureFailure"


def test_sdk_unsigned_payload() -> None:
    client, adapter = sdk_client(unsigned=True)
    describe(client)
    incoming = as_incoming(adapter.sent[0])
    assert incoming.headers["x-tc-content-sha256"] == "UNSIGNED-PAYLOAD"
    now = time.time()
    verify_tc3(incoming, lookup, now=now)
    # The body is not covered, so changing it keeps the signature valid ...
    verify_tc3(dataclasses.replace(incoming, body=b"{}"), lookup, now=now)
    # ... but dropping the header makes the verifier hash the body, which no longer matches.
    with pytest.raises(TencentError) as exc:
        verify_tc3(with_header(incoming, "x-tc-content-sha256", None), lookup, now=now)
    assert code_of(exc) == "AuthFailure.SignatureFailure"


def test_sdk_skip_sign_is_rejected() -> None:
    client, adapter = sdk_client()
    client.call_json("DescribeCloudRecording", {"SdkAppId": 1, "TaskId": "t"}, options={"SkipSign": True})
    incoming = as_incoming(adapter.sent[0])
    assert incoming.headers["authorization"] == "SKIP"
    with pytest.raises(TencentError) as exc:
        verify_tc3(incoming, lookup, now=time.time())
    assert code_of(exc) == "AuthFailure.SignatureFailure"


# ---------------------------------------------------------------------------------------------
# other SDKs' quirks (B.4.1), signed by hand


def test_node_signs_host_without_port() -> None:
    req = post_request()
    payload_hash = hashlib.sha256(BODY).hexdigest()
    canonical = canonical_request(
        method="POST",
        query_string="",
        headers=[("content-type", "application/json"), ("host", "127.0.0.1")],
        payload_hash=payload_hash,
    )
    sig = tc3_signature(
        secret_key=SECRET_KEY, date="2023-11-14", service="trtc", timestamp=str(TS), canonical=canonical
    )
    auth = (
        "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/trtc/tc3_request, "
        f"SignedHeaders=content-type;host, Signature={sig}"
    )
    assert verify_tc3(with_header(req, "authorization", auth), lookup, now=TS).secret_id == SECRET_ID


def test_java_charset_content_type_and_endpoint_service() -> None:
    req = with_header(post_request(), "content-type", "application/json; charset=utf-8")
    auth = verify_tc3(signed(req, service="127"), lookup, now=TS)
    assert auth.service == "127"


def test_extra_signed_header_in_given_order_and_lower_cased_values() -> None:
    req = post_request(x_tc_action="DescribeCloudRecording")
    # Literal values, in a non-sorted order taken from SignedHeaders.
    order = ("host", "x-tc-action", "content-type")
    assert verify_tc3(signed(req, signed_headers=order), lookup, now=TS).secret_id == SECRET_ID
    # Tencent's documentation lower-cases the values (x-tc-action:describecloudrecording).
    lowered = with_header(req, "x-tc-action", "describecloudrecording")
    auth = signed(lowered, signed_headers=("content-type", "host", "x-tc-action")).headers["authorization"]
    assert verify_tc3(with_header(req, "authorization", auth), lookup, now=TS).secret_id == SECRET_ID
    # A signed header that is covered cannot be changed.
    good = signed(req, signed_headers=order)
    with pytest.raises(TencentError) as exc:
        verify_tc3(with_header(good, "x-tc-action", "DeleteCloudRecording"), lookup, now=TS)
    assert code_of(exc) == "AuthFailure.SignatureFailure"


def test_header_names_in_any_case_and_values_trimmed() -> None:
    req = signed(post_request())
    shouty = dataclasses.replace(
        req, headers={k.title(): f" {v} " for k, v in req.headers.items()}
    )
    assert verify_tc3(shouty, lookup, now=TS).secret_id == SECRET_ID


def test_v1_python_underscore_quirk_and_host_without_port() -> None:
    params = {
        "Action": "DescribeCloudRecording",
        "Version": "2019-07-22",
        "Timestamp": str(TS),
        "Nonce": "7",
        "SecretId": SECRET_ID,
        "Some_Name": "x",
    }
    dotted = v1_string_to_sign("GET", ENDPOINT, params, dotted=True)
    assert "Some.Name=x" in dotted
    sig = base64.b64encode(hmac.new(SECRET_KEY.encode(), dotted.encode(), hashlib.sha1).digest()).decode()
    assert verify_v1("GET", ENDPOINT, {**params, "Signature": sig}, lookup, now=TS).method == "HmacSHA1"
    # Plain spelling (Go/Java/Node), signed with the bare hostname.
    sig = sign_v1("GET", "127.0.0.1", params, SECRET_KEY)
    assert verify_v1("GET", ENDPOINT, {**params, "Signature": sig}, lookup, now=TS).secret_id == SECRET_ID


# ---------------------------------------------------------------------------------------------
# failures and their codes


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "AuthFailure.InvalidAuthorization"),
        ("", "AuthFailure.InvalidAuthorization"),
        ("SKIP", "AuthFailure.SignatureFailure"),
        ("Bearer abc", "AuthFailure.InvalidAuthorization"),
        ("TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/trtc/tc3_request", "AuthFailure.InvalidAuthorization"),
        (
            "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/trtc, SignedHeaders=content-type;host, "
            f"Signature={POST_SIG}",
            "AuthFailure.InvalidAuthorization",
        ),
        (
            "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/trtc/tc3_request, SignedHeaders=content-type;host, "
            f"Signature={POST_SIG}",
            "AuthFailure.InvalidAuthorization",
        ),
        (
            "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/trtc/tc3_request, SignedHeaders=content-type, "
            f"Signature={POST_SIG}",
            "AuthFailure.InvalidAuthorization",
        ),
        (
            "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/trtc/tc3_request, "
            "SignedHeaders=content-type;host;x-missing, "
            f"Signature={POST_SIG}",
            "AuthFailure.InvalidAuthorization",
        ),
        (
            "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/trtc/tc3_request, SignedHeaders=content-type;host, "
            "Signature=xyz",
            "AuthFailure.InvalidAuthorization",
        ),
        (
            "TC3-HMAC-SHA256 Credential=AKIDOTHER/2023-11-14/trtc/tc3_request, SignedHeaders=content-type;host, "
            f"Signature={POST_SIG}",
            "AuthFailure.SecretIdNotFound",
        ),
        (
            "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-15/trtc/tc3_request, SignedHeaders=content-type;host, "
            f"Signature={POST_SIG}",
            "AuthFailure.SignatureFailure",
        ),
        (
            "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/live/tc3_request, SignedHeaders=content-type;host, "
            f"Signature={POST_SIG}",
            "AuthFailure.SignatureFailure",
        ),
    ],
)
def test_tc3_authorization_failures(authorization: str | None, code: str) -> None:
    req = with_header(post_request(), "authorization", authorization)
    with pytest.raises(TencentError) as exc:
        verify_tc3(req, lookup, now=TS)
    assert code_of(exc) == code
    assert SECRET_KEY not in exc.value.message


@pytest.mark.parametrize(
    ("timestamp", "now", "code"),
    [
        (None, TS, "MissingParameter"),
        ("17e8", TS, "InvalidParameter"),
        ("1700000000.5", TS, "InvalidParameter"),
        (str(TS), TS + 301, "AuthFailure.SignatureExpire"),
        (str(TS), TS - 301, "AuthFailure.SignatureExpire"),
        ("9" * 19, TS, "AuthFailure.SignatureExpire"),
    ],
)
def test_tc3_timestamp_failures(timestamp: str | None, now: float, code: str) -> None:
    req = with_header(signed(post_request()), "x-tc-timestamp", timestamp)
    with pytest.raises(TencentError) as exc:
        verify_tc3(req, lookup, now=now)
    assert code_of(exc) == code


def test_tc3_window_edges_and_custom_window() -> None:
    req = signed(post_request())
    verify_tc3(req, lookup, now=TS + 300)
    verify_tc3(req, lookup, now=TS - 300)
    with pytest.raises(TencentError) as exc:
        verify_tc3(req, lookup, now=TS + 61, window=60)
    assert code_of(exc) == "AuthFailure.SignatureExpire"


def test_tc3_tampering_and_secrets_stay_out_of_messages() -> None:
    req = signed(post_request())
    cases = [
        dataclasses.replace(req, body=BODY.replace(b"task-abc", b"task-xyz")),
        with_header(req, "host", "evil.example:8080"),
        with_header(req, "content-type", "text/plain"),
        dataclasses.replace(req, method="GET"),
    ]
    for bad in cases:
        with pytest.raises(TencentError) as exc:
            verify_tc3(bad, lookup, now=TS)
        assert code_of(exc) == "AuthFailure.SignatureFailure"
        assert SECRET_KEY not in str(exc.value) and POST_SIG not in str(exc.value)
    # A wrong key in the lookup is a signature failure too.
    with pytest.raises(TencentError) as exc:
        verify_tc3(req, lambda _id: "another-key", now=TS)
    assert code_of(exc) == "AuthFailure.SignatureFailure"
    with pytest.raises(TencentError) as exc:
        verify_tc3(dataclasses.replace(req, method="PUT"), lookup, now=TS)
    assert code_of(exc) == "UnsupportedProtocol"


def v1_base(**extra: str) -> dict[str, str]:
    params = {
        "Action": "DescribeCloudRecording",
        "Version": "2019-07-22",
        "Region": "ap-guangzhou",
        "Timestamp": str(TS),
        "Nonce": "12345",
        "SecretId": SECRET_ID,
        "SdkAppId": "1400000001",
        "TaskId": "task-abc",
    }
    params.update(extra)
    return params


def test_v1_signature_method_defaults_to_sha1() -> None:
    params = v1_base()
    text = v1_string_to_sign("POST", ENDPOINT, params).encode()
    sig = base64.b64encode(hmac.new(SECRET_KEY.encode(), text, hashlib.sha1).digest()).decode()
    assert sign_v1("POST", ENDPOINT, params, SECRET_KEY) == sig
    assert verify_v1("POST", ENDPOINT, {**params, "Signature": sig}, lookup, now=TS).method == "HmacSHA1"
    # An unescaped '+' in a query string arrives as a space; still accepted.
    assert verify_v1("POST", ENDPOINT, {**params, "Signature": sig.replace("+", " ")}, lookup, now=TS)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"SecretId": None}, "MissingParameter"),
        ({"Signature": None}, "MissingParameter"),
        ({"Timestamp": None}, "MissingParameter"),
        ({"Nonce": None}, "MissingParameter"),
        ({"Timestamp": "abc"}, "InvalidParameter"),
        ({"Nonce": "1.5"}, "InvalidParameter"),
        ({"Timestamp": str(TS - 1000)}, "AuthFailure.SignatureExpire"),
        ({"SignatureMethod": "HmacMD5"}, "InvalidParameterValue"),
        ({"SecretId": "AKIDOTHER"}, "AuthFailure.SecretIdNotFound"),
        ({"Signature": "not*base64"}, "AuthFailure.SignatureFailure"),
        ({"TaskId": "task-xyz"}, "AuthFailure.SignatureFailure"),
        ({"Extra": "1"}, "AuthFailure.SignatureFailure"),
    ],
)
def test_v1_failures(change: dict[str, str | None], code: str) -> None:
    params = v1_base(SignatureMethod="HmacSHA256")
    params["Signature"] = sign_v1("POST", ENDPOINT, params, SECRET_KEY)
    for name, value in change.items():
        if value is None:
            params.pop(name, None)
        else:
            params[name] = value
    with pytest.raises(TencentError) as exc:
        verify_v1("POST", ENDPOINT, params, lookup, now=TS)
    assert code_of(exc) == code
    assert SECRET_KEY not in str(exc.value)


def test_v1_method_and_host_are_signed() -> None:
    params = v1_base()
    params["Signature"] = sign_v1("POST", ENDPOINT, params, SECRET_KEY)
    for method, host in [("GET", ENDPOINT), ("POST", "other.example:8080")]:
        with pytest.raises(TencentError) as exc:
            verify_v1(method, host, params, lookup, now=TS)
        assert code_of(exc) == "AuthFailure.SignatureFailure"
