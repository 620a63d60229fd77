"""Benchmark inputs that cost what camera streams cost: moving, textured pictures with sensor-like
temporal noise (ffmpeg's testsrc2 + noise), H.264 without B-frames (as WebRTC publishers send)
and AAC. Flat test colours would decode and encode almost for free and let fixed per-frame
overheads dominate the comparison."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg


def camera_like(path: Path, index: int, *, seconds: float, width: int, height: int, fps: int,
                bitrate: int = 1_500_000) -> Path:
    video = (f"testsrc2=size={width}x{height}:rate={fps},hue=h={90 * index},"
             "noise=alls=6:allf=t+u")
    audio = f"sine=frequency={300 + 100 * index}:sample_rate=48000"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", video, "-f", "lavfi", "-i", audio, "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "veryfast", "-b:v", str(bitrate), "-g", str(2 * fps), "-bf", "0",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-ac", "1", "-movflags", "faststart", str(path)],
                   check=True)
    return path
