"""Flattened GET / v1 parameters (spec B.7) ⇄ nested objects, including the SDK's own flattening."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from tencentcloud.common.credential import Credential
from tencentcloud.trtc.v20190722.trtc_client import TrtcClient

from cloudrec.dialects.tencent.errors import TencentError
from cloudrec.dialects.tencent.params import COMMON_PARAMS, flatten, unflatten

CREATE: dict[str, Any] = {
    "SdkAppId": 1400000001,
    "RoomId": "room-1",
    "UserId": "recorder_1",
    "RecordParams": {"RecordMode": 2, "MaxIdleTime": 30},
    "SubscribeStreamUserIds": {"SubscribeAudioUserIds": ["u1", "u2"], "SubscribeVideoUserIds": []},
    "MixLayoutParams": {
        "MixLayoutMode": 4,
        "MixLayoutList": [
            {"UserId": "u1", "ImageLayer": 1, "Top": 0},
            {"UserId": "u2", "ImageLayer": 2, "Top": 360},
        ],
    },
    "MixTranscodeParams": {"VideoParams": {"Width": 1280, "Height": 720}},
    "ResourceExpiredHour": None,
}


def stringified(obj: Any) -> Any:
    """`CREATE` as unflatten returns it: strings for scalars, None and empty lists gone."""
    if isinstance(obj, dict):
        return {k: stringified(v) for k, v in obj.items() if v is not None and v != []}
    if isinstance(obj, list):
        return [stringified(v) for v in obj]
    return str(obj)


def test_round_trip() -> None:
    flat = flatten(CREATE)
    assert flat["MixLayoutParams.MixLayoutList.1.UserId"] == "u2"
    assert flat["SubscribeStreamUserIds.SubscribeAudioUserIds.0"] == "u1"
    assert "ResourceExpiredHour" not in flat
    assert unflatten(flat) == stringified(CREATE)


def test_sdk_flattening_is_understood() -> None:
    # The SDK's GET / v1 flattening (AbstractClient._format_params), sent through a real query string.
    client = TrtcClient(Credential("AKIDEXAMPLE", "SECRETEXAMPLE"), "ap-guangzhou")
    sdk_flat = client._fix_params({k: v for k, v in CREATE.items() if v is not None})
    query = urlencode(sdk_flat)
    assert unflatten(dict(parse_qsl(query))) == stringified(CREATE)


def test_booleans_and_common_params_kept() -> None:
    assert flatten({"A": True, "B": [False]}) == {"A": "true", "B.0": "false"}
    params = {"Action": "CreateCloudRecording", "Version": "2019-07-22", "Nonce": "1", "X.Y": "1"}
    nested = unflatten(params)
    assert nested["Action"] == "CreateCloudRecording"
    assert {k: v for k, v in nested.items() if k not in COMMON_PARAMS} == {"X": {"Y": "1"}}
    assert {"Action", "Version", "Region", "Timestamp", "Nonce", "SecretId", "Signature",
            "SignatureMethod", "Token", "Language", "RequestClient"} == COMMON_PARAMS


def test_index_order_and_gaps() -> None:
    params = {"L.10": "c", "L.2": "b", "L.0": "a", "O.3.K": "y", "O.1.K": "x"}
    assert unflatten(params) == {"L": ["a", "b", "c"], "O": [{"K": "x"}, {"K": "y"}]}


def test_nested_lists() -> None:
    assert unflatten({"A.0.0": "x", "A.0.1": "y", "A.1.0": "z"}) == {"A": [["x", "y"], ["z"]]}


def test_pairs_input_and_duplicates() -> None:
    assert unflatten([("A.B", "1"), ("A.C", "2")]) == {"A": {"B": "1", "C": "2"}}
    with pytest.raises(TencentError) as exc:
        unflatten([("A.B", "1"), ("A.B", "2")])
    assert exc.value.code == "InvalidParameter"


@pytest.mark.parametrize(
    "params",
    [
        {"A": "1", "A.B": "2"},  # scalar, then parent
        {"A.B": "2", "A": "1"},  # parent, then scalar
        {"A.0": "1", "A.0.B": "2"},
        {"A.0": "1", "A.B": "2"},  # list index and member name mixed
        {"A.0": "1", "A.00": "2"},  # the same index twice
        {"A..B": "1"},
        {".A": "1"},
        {"A.": "1"},
        {"": "1"},
        {".".join(["A"] * 100): "1"},  # absurd depth
    ],
)
def test_invalid(params: dict[str, str]) -> None:
    with pytest.raises(TencentError) as exc:
        unflatten(params)
    assert exc.value.code == "InvalidParameter"


def test_values_stay_strings_and_unicode_digits_are_names() -> None:
    assert unflatten({"A.٣": "v", "N": "007"}) == {"A": {"٣": "v"}, "N": "007"}
