"""`RecordingSpec`: a validated, frozen description of one recording task, vendor-neutral.

Dialects build it from vendor requests; the worker runs it. Nothing here knows a vendor field name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import Enum, IntEnum

from cloudrec.core.events import CallbackTarget
from cloudrec.core.rooms import RoomKey


class RecordMode(IntEnum):
    SINGLE = 1  # one file set per user
    MIXED = 2  # everyone composited into one picture and one audio mix


class StreamType(IntEnum):
    AUDIO_VIDEO = 0
    AUDIO = 1
    VIDEO = 2

    @property
    def audio(self) -> bool:
        return self is not StreamType.VIDEO

    @property
    def video(self) -> bool:
        return self is not StreamType.AUDIO


class MediaSelect(IntEnum):
    """Which video tracks a single-stream recording takes."""

    MAIN_AND_AUX = 0
    MAIN = 1
    AUX = 2


class FillType(IntEnum):
    LAST_FRAME = 0
    BLACK = 1


class Container(Enum):
    """Output file kinds; one task may write several from the same encoded packets."""

    HLS = "hls"
    MP4 = "mp4"
    AAC = "aac"
    MP3 = "mp3"
    FLV = "flv"


class LayoutMode(IntEnum):
    FLOAT = 1
    SCREEN_SHARE = 2
    GRID = 3
    CUSTOM = 4


class RenderMode(IntEnum):
    STRETCH = 0
    CROP = 1
    LETTERBOX = 2
    SMART_STRETCH = 3


class TrackKind(Enum):
    """The tracks a participant may publish."""

    AUDIO = "audio"
    MAIN = "main"  # camera video
    AUX = "aux"  # screen-share video

    @property
    def is_video(self) -> bool:
        return self is not TrackKind.AUDIO


@dataclass(frozen=True, slots=True, kw_only=True)
class UserFilter:
    """An allow-list or block-list of user ids; an entry ending in `.*$` is a prefix."""

    allow: tuple[str, ...] = ()
    block: tuple[str, ...] = ()

    def admits(self, user_id: str, present: frozenset[str] = frozenset()) -> bool:
        if self.allow:
            return any(_entry_matches(e, user_id, present) for e in self.allow)
        return not any(_entry_matches(e, user_id, present) for e in self.block)


def _entry_matches(entry: str, user_id: str, present: frozenset[str]) -> bool:
    # "1.*$" is a prefix rule, unless a user literally named "1.*$" is in the room.
    if entry.endswith(".*$") and entry not in present:
        return user_id.startswith(entry[:-3])
    return entry == user_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    audio: UserFilter = UserFilter()
    video: UserFilter = UserFilter()

    def wants(self, user_id: str, kind: TrackKind, present: frozenset[str] = frozenset()) -> bool:
        rule = self.video if kind.is_video else self.audio
        return rule.admits(user_id, present)


@dataclass(frozen=True, slots=True, kw_only=True)
class VideoEncoding:
    width: int = 360
    height: int = 640
    fps: int = 15
    bitrate: int = 550_000  # bits/s
    gop_seconds: int = 10
    codec: str = "h264"


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioEncoding:
    sample_rate: int = 48_000
    channels: int = 2
    bitrate: int = 64_000
    codec: str = "aac"


RGB = tuple[int, int, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRef:
    """A picture fetched from a URL (jpg/png), fitted into its area with `render`."""

    url: str
    render: RenderMode = RenderMode.CROP


@dataclass(frozen=True, slots=True, kw_only=True)
class Area:
    """A rectangle in fractions of the canvas (0–1), for layouts given in normalized coordinates."""

    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Pane:
    """One tile of a mixed picture, in output pixels (or `area`, fractions of the canvas, which then
    wins). `user_id` None = filled by entry order."""

    x: int = 0
    y: int = 0
    width: int = 0
    height: int = 0
    area: Area | None = None
    user_id: str | None = None
    track: TrackKind = TrackKind.MAIN
    z: int = 0
    alpha: int = 0  # 0 opaque … 255 fully transparent
    render: RenderMode = RenderMode.CROP
    background: RGB | None = None  # painted behind this tile's video; None = the canvas shows
    placeholder: ImageRef | None = None  # shown when the tile has no video (see Layout.placeholders)


# The CJK sans-serif face text watermarks may name (Source Han Sans, also sold as Noto Sans CJK).
CJK_FONT_FACE = "SourceHanSans"


class WatermarkKind(Enum):
    IMAGE = "image"
    TEXT = "text"
    TIMESTAMP = "timestamp"


class Corner(IntEnum):
    """Where a timestamp watermark sits."""

    TOP_LEFT = 0
    TOP_RIGHT = 1
    BOTTOM_LEFT = 2
    BOTTOM_RIGHT = 3
    TOP_CENTER = 4
    BOTTOM_CENTER = 5
    CENTER = 6


@dataclass(frozen=True, slots=True, kw_only=True)
class Watermark:
    """An image, a text or the wall-clock time drawn over the mix (in list order, last on top).

    IMAGE fits `image` into the rectangle (its RenderMode); TEXT draws `text` in the rectangle; TIMESTAMP
    draws "YYYY-MM-DD HH:MM:SS" of the frame's wall-clock time at `position` (the rectangle is
    ignored) in UTC+`tz_hours`.
    """

    kind: WatermarkKind
    x: int = 0
    y: int = 0
    width: int = 0
    height: int = 0
    image: ImageRef | None = None
    text: str = ""
    font: str = ""  # face name: "" the default face, CJK_FONT_FACE, or one of `[media.fonts]`
    font_size: int = 14  # pixels; 0 = chosen from the canvas height (timestamps)
    font_color: RGB = (255, 255, 255)
    text_background: RGB | None = None  # None = transparent
    position: Corner = Corner.TOP_LEFT
    tz_hours: float = 8.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    mode: LayoutMode = LayoutMode.GRID
    panes: tuple[Pane, ...] = ()  # CUSTOM only
    background: RGB = (0, 0, 0)  # RGB
    background_image: ImageRef | None = None  # over the colour, under the tiles
    render: RenderMode = RenderMode.CROP  # template layouts
    main_user_id: str | None = None  # FLOAT / SCREEN_SHARE big window
    main_track: TrackKind = TrackKind.MAIN
    pure_audio_disable: bool = False  # audio-only users get no tile
    placeholders: bool = False  # tiles without video show their placeholder image
    default_placeholder: ImageRef | None = None  # for tiles without their own placeholder
    watermarks: tuple[Watermark, ...] = ()

    def image_urls(self) -> tuple[str, ...]:
        """Every picture this layout may draw, each once, in a stable order."""
        refs = [self.background_image, self.default_placeholder if self.placeholders else None]
        refs += [p.placeholder for p in self.panes if self.placeholders]
        refs += [w.image for w in self.watermarks if w.kind is WatermarkKind.IMAGE]
        return tuple(dict.fromkeys(r.url for r in refs if r is not None))


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageTarget:
    """Where files go. Credentials are kept out of repr so they never reach a log."""

    vendor: str = "local"  # "cos", "s3", "local", "vod"
    region: str = ""
    bucket: str = ""
    prefix: tuple[str, ...] = ()
    endpoint_url: str | None = None
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    task_dir: bool = True  # keys are `<prefix…>/<TaskId>/<name>`; False: `<prefix…>/<name>` (names are unique)


@dataclass(frozen=True, slots=True, kw_only=True)
class NameScheme:
    """How the files of some output formats are named, as templates (see `core.naming.NAME_FIELDS`).

    Names are relative paths under the destination root, without extension. HLS segments live in
    their playlist's directory. A name that uses `{end:…}` gets its final form when the file closes.
    """

    formats: frozenset[Container]
    file: str  # whole files and playlists
    segment: str = ""  # HLS segments; "" = `<file>_{seq}`
    tz_hours: float = 0.0  # of {start:…} and {end:…}
    labels: tuple[tuple[str, str], ...] = ()  # "<media>/<track_type>" → the text of {label}


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingSpec:
    room: RoomKey
    robot_user_id: str
    mode: RecordMode
    stream_type: StreamType = StreamType.AUDIO_VIDEO
    subscription: Subscription = Subscription()
    max_idle_seconds: int = 30
    outputs: frozenset[Container] = frozenset({Container.HLS})
    av_merge: bool = False
    max_file_seconds: int = 86400
    media_select: MediaSelect = MediaSelect.MAIN_AND_AUX
    fill_type: FillType = FillType.LAST_FRAME
    video: VideoEncoding = VideoEncoding()
    audio: AudioEncoding = AudioEncoding()
    layout: Layout = Layout()
    storage: StorageTarget = StorageTarget()
    names: tuple[NameScheme, ...] = ()  # by output format; none = the product's own (A.8) names
    segment_seconds: float | None = None  # HLS target duration; None = the server's setting
    callback: CallbackTarget | None = None  # this task's own receiver (else the dialect's configured one)
    file_events: frozenset[str] = frozenset()  # FILE_FORMATS whose stored files get a FILE_STORED event
    # Time window and presence rules (a scheduled recording of a live stream):
    not_before_ms: int = 0  # nothing is recorded before this unix time
    not_after_ms: int = 0  # the task ends (TIMEOUT) at this unix time; 0 = no end
    idle_stop: bool = True  # False: absent publishers never end the task (only not_after does)
    new_files_per_publish: bool = False  # each publish of a user starts a new file set
    idle_per_stream: bool = False  # single mode: each stream ends after max_idle_seconds alone

    def modified(self, *, layout: Layout | None, subscription: Subscription | None,
                 media_select: MediaSelect | None = None) -> RecordingSpec:
        """The spec after a live change (layout, subscriptions and the video tracks taken are replaced,
        not patched; None keeps the current one)."""
        return replace(
            self,
            layout=layout if layout is not None else self.layout,
            subscription=subscription if subscription is not None else self.subscription,
            media_select=media_select if media_select is not None else self.media_select,
        )


SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9_-]+$")
