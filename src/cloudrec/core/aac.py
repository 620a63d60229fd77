"""AAC bitstream facts every publisher and sink needs: ADTS headers and AudioSpecificConfig.

The twin of `core/h264.py`: one implementation for RTMP (ASC), pulled streams (ADTS) and the sinks.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudrec.core.h264 import BitReader

AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def is_adts(data: bytes) -> bool:
    return len(data) >= 7 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0


def adts_header_size(data: bytes) -> int:
    return 7 if data[1] & 0x01 else 9


def adts_audio_config(data: bytes) -> bytes:
    """The AudioSpecificConfig equivalent to an ADTS header (`data` must be ADTS)."""
    object_type = (data[2] >> 6) + 1
    rate_index = (data[2] >> 2) & 0x0F
    channels = ((data[2] & 0x01) << 2) | (data[3] >> 6)
    return ((object_type << 11) | (rate_index << 7) | (channels << 3)).to_bytes(2, "big")


def adts_sample_rate(data: bytes) -> int:
    index = (data[2] >> 2) & 0x0F
    return AAC_RATES[index] if index < len(AAC_RATES) else 0


def strip_adts(data: bytes) -> bytes:
    return data[adts_header_size(data):] if is_adts(data) else data


@dataclass(frozen=True, slots=True, kw_only=True)
class AacConfig:
    object_type: int
    sample_rate: int
    channels: int


def parse_audio_specific_config(asc: bytes) -> AacConfig:
    r = BitReader(asc)

    def rate() -> int:
        index = r.u(4)
        return r.u(24) if index == 15 else (AAC_RATES[index] if index < len(AAC_RATES) else 0)

    object_type = r.u(5)
    if object_type == 31:
        object_type = 32 + r.u(6)
    sample_rate = rate()
    config = r.u(4)
    channels = 8 if config == 7 else (config if config <= 6 else 0)
    if object_type in (5, 29):  # explicit SBR (HE-AAC) / PS: the output rate is the extension's
        sample_rate = rate()
        if object_type == 29 and channels == 1:
            channels = 2
    return AacConfig(object_type=object_type, sample_rate=sample_rate, channels=channels)
