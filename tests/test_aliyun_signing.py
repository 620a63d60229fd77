"""Alibaba signing, query decoding and ARTC token vectors (spec §2.3, §4.2, §4.3, §10.2, §12)."""

from __future__ import annotations

import hashlib

import pytest

from cloudrec.control.apps import AppInfo
from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import TrackKind
from cloudrec.dialects.aliyun import signing, tokens
from cloudrec.dialects.aliyun.errors import AliyunError
from cloudrec.dialects.aliyun.params import decode_form, indexed_list, nested, to_dict

RPC_PARAMS = {
    "AccessKeyId": "testAK", "Action": "StopRtcCloudRecording", "Format": "json", "SignatureMethod": "HMAC-SHA1",
    "SignatureNonce": "0123456789abcdef0123456789abcdef", "SignatureVersion": "1.0", "TaskId": "task 1/ü",
    "Timestamp": "2025-01-01T00:00:00Z", "Version": "2016-11-01",
}


def test_rpc_vector() -> None:
    assert signing.rpc_string_to_sign("POST", RPC_PARAMS.items()) == (
        "POST&%2F&AccessKeyId%3DtestAK%26Action%3DStopRtcCloudRecording%26Format%3Djson%26SignatureMethod%3DHMAC-SHA1"
        "%26SignatureNonce%3D0123456789abcdef0123456789abcdef%26SignatureVersion%3D1.0%26TaskId%3Dtask%25201%252F%25C3%25BC"
        "%26Timestamp%3D2025-01-01T00%253A00%253A00Z%26Version%3D2016-11-01")
    assert signing.rpc_signature("testSecret", "POST", RPC_PARAMS.items()) == "nCHnwkIofzrIRzik/4DTEqGWOTQ="
    # the Signature parameter itself never takes part; an empty value does (legacy SignatureType=)
    with_sig = [*RPC_PARAMS.items(), ("Signature", "x")]
    assert signing.rpc_signature("testSecret", "POST", with_sig) == "nCHnwkIofzrIRzik/4DTEqGWOTQ="
    assert signing.rpc_signature("testSecret", "POST", [*RPC_PARAMS.items(), ("SignatureType", "")]) != \
        "nCHnwkIofzrIRzik/4DTEqGWOTQ="


def test_acs3_vector() -> None:
    headers = {
        "accept": "application/json", "host": "live.aliyuncs.com", "x-acs-action": "StopRtcCloudRecording",
        "x-acs-content-sha256": signing.EMPTY_SHA256, "x-acs-date": "2025-01-01T00:00:00Z",
        "x-acs-signature-nonce": "0123456789abcdef0123456789abcdef", "x-acs-version": "2016-11-01",
    }
    names = "accept;host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
    canonical = signing.acs3_canonical_request("POST", "/", [("TaskId", "task 1/ü")], {**headers, "user-agent": "x"},
                                               names.split(";"), signing.EMPTY_SHA256)
    assert canonical.split("\n")[2] == "TaskId=task%201%2F%C3%BC"
    assert canonical.split("\n")[-2] == names
    assert hashlib.sha256(canonical.encode()).hexdigest() == "32da1d04b2fe0bd1c6e211fcbc1c09a7e803a4f1ebff2177a12239ceaf531f54"
    assert signing.acs3_signature("testSecret", canonical) == "9568e3f1d7357fce999cad9b2434378631fe2f67ed28957772ab0ae7cd59813a"
    auth = signing.parse_authorization(f"ACS3-HMAC-SHA256 Credential=testAK,SignedHeaders={names},Signature={'a' * 64}")
    assert auth is not None and auth.access_key_id == "testAK" and auth.signed_headers[0] == "accept"
    assert signing.parse_authorization("ACS3-HMAC-SHA256 Credential=testAK") is None


def test_percent_encoding() -> None:
    assert signing.percent_encode("a b*~/+") == "a%20b%2A~%2F%2B"


def test_query_decoding_three_shapes() -> None:
    # current SDKs: compact JSON in one parameter, spaces as "+" on the wire
    wire = ("ChannelId=room+1%2F%C3%BC&RecordParams=%7B%22RecordMode%22%3A1%7D&NotifyFileUploadedFormat.2=HLS"
            "&NotifyFileUploadedFormat.1=MP4&SignatureType=")
    params = to_dict(decode_form(wire))
    assert params["ChannelId"] == "room 1/ü" and params["SignatureType"] == ""
    assert nested(params, "RecordParams", "InvalidParameter.RecordParams") == {"RecordMode": 1}
    assert indexed_list(params, "NotifyFileUploadedFormat", "X") == ["MP4", "HLS"]
    # legacy Python SDK: JSON with spaces
    assert nested({"RecordParams": '{"RecordMode": 0}'}, "RecordParams", "X") == {"RecordMode": 0}
    # old C++ SDK: dotted keys, 1-based lists
    dotted = {"StorageParams.FileInfo.2.Format": "MP4", "StorageParams.FileInfo.1.Format": "HLS",
              "StorageParams.StorageType": "1", "StorageParams.OSSParams.OSSBucket": "b"}
    assert nested(dotted, "StorageParams", "X") == {
        "FileInfo": [{"Format": "HLS"}, {"Format": "MP4"}], "StorageType": "1", "OSSParams": {"OSSBucket": "b"}}
    assert nested({}, "RecordParams", "X") is None and nested({"RecordParams": ""}, "RecordParams", "X") is None
    with pytest.raises(AliyunError) as err:
        nested({"RecordParams": "{nope"}, "RecordParams", "InvalidParameter.RecordParams")
    assert err.value.code == "InvalidParameter.RecordParams" and err.value.status == 405


def test_classic_token_vector() -> None:
    assert tokens.classic_token("abc", "abckey", "abcChannel", "abcUser", "", 1699423634) == \
        "3c9ee8d9f8734f0b7560ed8022a0590659113955819724fc9345ab8eedf84f31"


APPS = {1400000001: AppInfo(id=1400000001, key="appKey")}


def test_tokens_admit_each_form() -> None:
    room = RoomKey(1400000001, "ch-1", RoomIdType.STRING)
    exp = 2_000_000_000
    classic = tokens.classic_token("1400000001", "appKey", "ch-1", "u1", "n", exp)
    join = tokens.admit(APPS, token=classic, app_id="1400000001", channel_id="ch-1", user_id="u1", nonce="n",
                        timestamp=str(exp), now=1e9)
    assert join == tokens.Join(room=room, user_id="u1")
    single = tokens.single_parameter_token("1400000001", "appKey", "ch-1", "u1", exp)
    assert tokens.admit(APPS, token=single, now=1e9) == join
    app_token = tokens.make_app_token("1400000001", "appKey", "*", "u1", issue=10, salt=3, expire=exp)
    assert tokens.admit(APPS, token=app_token, app_id="1400000001", channel_id="ch-1", now=1e9) == join
    assert all(tokens.is_artc_token(t) for t in (classic, single, app_token))
    assert not tokens.is_artc_token("eJwtjEEKgjAQ")  # a TRTC UserSig
    bad = [
        dict(token=classic, app_id="1400000001", channel_id="ch-2", user_id="u1", nonce="n", timestamp=str(exp), now=1e9),
        dict(token=classic, app_id="1400000001", channel_id="ch-1", user_id="u1", nonce="n", timestamp=str(exp), now=exp + 1),
        dict(token=classic, app_id="1400000009", channel_id="ch-1", user_id="u1", nonce="n", timestamp=str(exp), now=1e9),
        dict(token=tokens.make_app_token("1400000001", "other", "*", "u1", issue=10, salt=3, expire=exp),
             app_id="1400000001", channel_id="ch-1", now=1e9),
        dict(token=tokens.make_app_token("1400000001", "appKey", "ch-1", "u1", issue=10, salt=3, expire=exp,
                                         privilege=tokens.PRIV_ENABLED | tokens.PRIV_AUDIO),
             app_id="1400000001", now=1e9),  # may publish audio, not camera video
        dict(token=app_token, app_id="1400000001", channel_id="ch-1", now=exp + 1),
    ]
    for case in bad:
        with pytest.raises(tokens.TokenRejected):
            tokens.admit(APPS, track=TrackKind.MAIN, **case)  # type: ignore[arg-type]
