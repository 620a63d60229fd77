"""Object names of recorded files (TRTC A.8 conventions; they are the product's own names too)."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

from cloudrec.core.rooms import RoomIdType, RoomKey
from cloudrec.core.spec import TrackKind


def encode_id(value: str) -> str:
    """Base64 with `/`→`-` and `=`→`.`: safe in object keys, reversible."""
    return base64.b64encode(value.encode()).decode().replace("/", "-").replace("=", ".")


def decode_id(value: str) -> str:
    return base64.b64decode(value.replace("-", "/").replace(".", "=")).decode()


def utc_stamp(unix_ms: int) -> str:
    """`YYYYMMDDhhmmssSSS` in UTC."""
    dt = datetime.fromtimestamp(unix_ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y%m%d%H%M%S") + f"{unix_ms % 1000:03d}"


def room_part(room: RoomKey) -> str:
    return room.room_id if room.id_type is RoomIdType.INTEGER else encode_id(room.room_id)


def mixed_base(room: RoomKey) -> str:
    return f"{room.app_id}_{room_part(room)}"


def user_base(room: RoomKey, user_id: str, video_track: TrackKind) -> str:
    media = "aux" if video_track is TrackKind.AUX else "main"
    return f"{mixed_base(room)}__UserId_s_{encode_id(user_id)}__UserId_e_{media}"


def playlist_name(base: str, track_type: str | None) -> str:
    return f"{base}_{track_type}.m3u8" if track_type else f"{base}.m3u8"


def segment_name(base: str, track_type: str | None, start_unix_ms: int, ext: str = "ts") -> str:
    middle = f"_{track_type}" if track_type else ""
    return f"{base}{middle}_{utc_stamp(start_unix_ms)}.{ext}"


def file_name(base: str, track_type: str | None, index: int, ext: str) -> str:
    middle = f"_{track_type}" if track_type else ""
    return f"{base}{middle}_{index}.{ext}"
