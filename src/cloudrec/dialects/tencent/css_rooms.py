"""CSS streams as rooms: a pushed stream `<domain>/<AppName>/<StreamName>` is a string room of the
reserved app 0 (TRTC SdkAppIds are never 0), with one publisher whose user id is the stream name."""

from __future__ import annotations

from cloudrec.core.rooms import RoomIdType, RoomKey

CSS_APP_ID = 0


def domain_key(name: str) -> str:
    """A domain name as rooms, tasks, rules and `[[css.domains]]` compare it (DNS names ignore case)."""
    return name.strip().rstrip(".").lower()


def stream_room(domain: str, app_name: str, stream_name: str) -> RoomKey:
    return RoomKey(CSS_APP_ID, f"{domain}/{app_name}/{stream_name}", RoomIdType.STRING)


def stream_of(room: RoomKey) -> tuple[str, str, str]:
    """(domain, AppName, StreamName) of a CSS room. Domains and AppNames hold no "/"; stream names may."""
    if room.app_id != CSS_APP_ID or room.id_type is not RoomIdType.STRING:
        raise ValueError(f"{room} is not a CSS stream")
    domain, app_name, stream_name = room.room_id.split("/", 2)
    return domain, app_name, stream_name
