"""File names from templates (`NameScheme`): expansion rules, and real sinks writing under them."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from cloudrec.core.media import FileEvent
from cloudrec.core.naming import A8Names, PatternNames, TakenNames, finish_pending, safe_name
from cloudrec.core.spec import Container, NameScheme
from cloudrec.output.factory import make_sinks
from cloudrec.output.target import SinkTarget
from cloudrec.storage.playlist import publishable, segment_names
from tests.test_output_sinks import demux_units, encode_media, interleave, probe

START_MS = 1_746_513_442_123  # 2025-05-06 06:37:22.123 UTC = 14:37:22 in UTC+8
FIELDS = {"app": "1400000001", "room": "room1", "user": "alice", "media": "main", "task": "T1", "random": "0badf00d"}


def names(*schemes: NameScheme) -> PatternNames:
    return PatternNames(schemes, FIELDS, A8Names("fallback", None))


def test_templates_expand_neutral_fields_in_their_time_zone() -> None:
    n = names(NameScheme(formats=frozenset({Container.MP4, Container.HLS}), tz_hours=8,
                         file="{app}_{room}_{user}_{label}_{start:%Y-%m-%d-%H:%M:%S}",
                         segment="{app}_{room}_{user}_{start:%Y-%m-%d-%H:%M:%S}_{seq}",
                         labels=(("main/audio_video", "OC"),)))
    assert n.file("audio_video", 1, START_MS, "mp4") == "1400000001_room1_alice_OC_2025-05-06-14:37:22.mp4"
    assert n.playlist("video", START_MS) == "1400000001_room1_alice__2025-05-06-14:37:22.m3u8"
    assert n.segment("video", START_MS + 4000, 3, "a/b/p.m3u8") == "a/b/1400000001_room1_alice_2025-05-06-14:37:26_3.ts"
    assert n.file("audio", 1, START_MS, "mp3") == "fallback_1.mp3"  # no scheme for MP3: the product's names
    assert not n.renames("mp4")


def test_end_time_names_are_provisional_until_the_file_closes() -> None:
    n = names(NameScheme(formats=frozenset({Container.MP4}), file="/{room}/{task}-{random}/{start:%H%M%S}_{end:%H%M%S}{end_ms}"[1:]))
    assert n.renames("mp4")
    assert n.file("video", 1, START_MS, "mp4") == "room1/T1-0badf00d/063722_open000.mp4"
    assert n.file("video", 1, START_MS, "mp4", START_MS + 61_456) == "room1/T1-0badf00d/063722_063823579.mp4"


def test_a_provisional_name_keeps_how_it_ends_so_a_crash_does_not_lose_it() -> None:
    """What `pending` returns is all a restarted process has (the namer and its random part are
    gone): it gives the same name as a normal close, in the scheme's time zone."""
    n = names(NameScheme(formats=frozenset({Container.MP4}), tz_hours=8, file="{random}/{start:%H%M%S}_{end:%d-%H%M%S}{end_ms}"))
    pending = n.pending("video", 1, START_MS, "mp4")
    assert finish_pending(pending, START_MS + 61_456) == "0badf00d/143722_06-143823579.mp4"
    assert n.file("video", 1, START_MS, "mp4", START_MS + 61_456) == "0badf00d/143722_06-143823579.mp4"
    assert n.pending("video", 1, START_MS, "flv") == "" and A8Names("b", None).pending("video", 1, START_MS, "mp4") == ""


@pytest.mark.parametrize("bad", ["../x", "a//b", "/abs", ".hidden", "a/./b", ""])
def test_unsafe_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        safe_name(bad)


def test_a_name_is_never_handed_out_twice_in_a_task() -> None:
    """A pattern without a time or index (CSS `{StreamID}`) names split files and later pushes alike:
    the task's namers share what was taken, across file sets and after a takeover."""
    scheme = NameScheme(formats=frozenset({Container.MP4, Container.HLS}), file="{room}")
    taken = TakenNames(["room1.mp4"])  # written by an earlier run of the task
    first, second = (PatternNames((scheme,), FIELDS, A8Names("fallback", None), taken) for _ in range(2))
    assert first.file("video", 1, START_MS, "mp4") == "room1_2.mp4"
    assert first.file("video", 2, START_MS, "mp4") == "room1_3.mp4"
    assert second.file("video", 1, START_MS, "mp4") == "room1_4.mp4"
    assert [first.playlist("video", START_MS), second.playlist("video", START_MS)] == ["room1.m3u8", "room1_2.m3u8"]


def test_playlists_list_segments_relative_to_their_directory() -> None:
    text = "#EXTM3U\n#EXTINF:4.000,\ns1.ts\n#EXTINF:4.000,\ns2.ts\n#EXT-X-ENDLIST\n"
    pub = publishable(text, {"d/s1.ts"}, "d/")
    assert segment_names(pub.text) == ["s1.ts"] and not pub.complete
    assert publishable(text, {"d/s1.ts", "d/s2.ts"}, "d/").complete


def test_sinks_write_named_files_in_directories_and_rename_at_close(tmp_path: Path) -> None:
    media = encode_media(tmp_path / "src.mp4", seconds=6.0)
    video, audio = demux_units(media)
    events: list[FileEvent] = []
    scheme_mp4 = NameScheme(formats=frozenset({Container.MP4}), file="rec/{user}/{start:%H%M%S}-{end:%H%M%S}")
    scheme_hls = NameScheme(formats=frozenset({Container.HLS}), file="live/{room}/{user}", segment="{user}_{seq}")
    out = tmp_path / "spool"
    target = SinkTarget(directory=out, names=names(scheme_mp4, scheme_hls), track_type=None, user_id="alice",
                        media="main", wall0_ms=START_MS, on_event=events.append)
    sinks = make_sinks(frozenset({Container.MP4, Container.HLS}), target, max_file_seconds=3600, has_video=True,
                       has_audio=True, segment_seconds=2.0)
    for s in sinks:
        s.open([video[0].info, audio[0].info])
    for index, unit in interleave(video, audio):
        for s in sinks:
            s.write(index, unit)
    for s in sinks:
        s.close()

    mp4 = [e for e in events if e.name.endswith(".mp4")]
    # reported under its provisional name (with how it ends) while written; renamed when it closes
    assert [(e.final, bool(e.pending), e.replaces) for e in mp4] == [(False, True, ""), (True, False, mp4[0].name)]
    assert mp4[0].name == "rec/alice/063722-open.mp4"
    mp4 = mp4[1:]
    assert mp4[0].name.startswith("rec/alice/063722-06372") and "open" not in mp4[0].name
    assert not list(out.rglob("*open*"))
    assert probe(out / mp4[0].name)["frames"] == 150

    playlist = out / "live/room1/alice.m3u8"
    listed = segment_names(playlist.read_text())
    assert listed == [f"alice_{i}.ts" for i in range(len(listed))] and len(listed) >= 3
    segments = [e.name for e in events if e.kind == "segment"]
    assert segments == [f"live/room1/{name}" for name in listed]
    with av.open(str(playlist)) as c:  # the playlist plays from its own directory
        assert sum(1 for _ in c.decode(video=0)) == 150
