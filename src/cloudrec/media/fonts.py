"""Font faces for text and timestamp watermarks.

A watermark names a face ("" is the default). The operator maps names to files: `[media] font_path`
is the default face, `[media.fonts]` adds named ones. "SourceHanSans" is also found by itself where
Source Han Sans or Noto Sans CJK is installed (one design under two names; Debian's
`fonts-noto-cjk`). Text that the chosen face cannot draw (Chinese in a Latin-only font) is drawn
with that CJK face instead of as empty boxes. Without any file, Pillow's built-in face is used.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import ImageFont

from cloudrec.core.spec import CJK_FONT_FACE

logger = logging.getLogger(__name__)

MIN_FONT_SIZE = 8
# Where distributions install Noto Sans CJK / Source Han Sans (Debian/Ubuntu, Fedora, Arch, Alpine).
CJK_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/adobe-source-han-sans/SourceHanSans-Regular.ttc",
    "/usr/share/fonts/adobe-source-han-sans/SourceHanSansSC-Regular.otf",
)
_NO_GLYPH = "\U0010ffff"  # a noncharacter: every face draws it with its "missing glyph" shape

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True, slots=True)
class FontFile:
    path: Path
    index: int = 0  # the face within a collection (.ttc)


@dataclass(frozen=True, slots=True)
class FontFiles:
    """The default face's file (None: Pillow's built-in face) and named faces' files."""

    default: FontFile | None = None
    named: tuple[tuple[str, FontFile], ...] = ()

    def named_file(self, face: str) -> FontFile | None:
        """The file of the named `face` (case-insensitive), if there is one."""
        return next((f for name, f in self.named if name.casefold() == face.casefold()), None)

    def file(self, face: str) -> FontFile | None:
        """The file of `face`; unknown names and "" get the default face."""
        named = self.named_file(face) if face else None
        return named if named is not None else self.default

    def cjk(self) -> FontFile | None:
        return self.named_file(CJK_FONT_FACE)


def collection_index(path: Path, suffix: str = " SC") -> int:
    """In a font collection, the face whose family name ends with `suffix` (Noto Sans CJK's
    collections hold JP, KR, SC, TC and HK faces; SC draws Simplified Chinese forms); else 0."""
    if path.suffix.lower() not in (".ttc", ".otc"):
        return 0
    for i in range(32):
        try:
            family = ImageFont.truetype(str(path), MIN_FONT_SIZE, index=i).getname()[0] or ""
        except OSError:
            break
        if family.endswith(suffix):
            return i
    return 0


def find_cjk_font() -> FontFile | None:
    """Source Han Sans / Noto Sans CJK installed on this machine, if any."""
    for candidate in CJK_CANDIDATES:
        path = Path(candidate)
        if path.is_file():
            return FontFile(path, collection_index(path))
    return None


def font_files(default: Path | None, named: Mapping[str, Path]) -> FontFiles:
    """The operator's files, plus the CJK face found on the machine unless one is configured."""
    faces = {name: FontFile(path, collection_index(path)) for name, path in named.items()}
    if all(name.casefold() != CJK_FONT_FACE.casefold() for name in faces):
        found = find_cjk_font()
        if found is not None:
            faces[CJK_FONT_FACE] = found
    return FontFiles(default=FontFile(default, collection_index(default)) if default is not None else None,
                     named=tuple(sorted(faces.items())))


class Fonts:
    """Loaded fonts by file and pixel size, for one compositor (one thread)."""

    def __init__(self, files: FontFiles | None = None) -> None:
        self.files = files if files is not None else FontFiles()
        self._fonts: dict[tuple[FontFile | None, int], Font] = {}
        self._covers: dict[tuple[FontFile | None, int, str], bool] = {}
        self._warned: set[FontFile | str] = set()

    def get(self, size: int, face: str = "", text: str = "") -> Font:
        """`face` at `size` pixels; the CJK face instead when it draws more of `text`'s characters."""
        size = max(MIN_FONT_SIZE, size)
        if face and self.files.named_file(face) is None and face not in self._warned:
            self._warned.add(face)
            logger.warning("font face not installed; using the default face", extra={"face": face})
        file = self.files.file(face)
        font = self._load(file, size)
        cjk = self.files.cjk()
        if text and cjk is not None and cjk != file:
            missing = self._missing(file, size, text)
            if missing and len(self._missing(cjk, size, text)) < len(missing):
                return self._load(cjk, size)
        return font

    def _load(self, file: FontFile | None, size: int) -> Font:
        font = self._fonts.get((file, size))
        if font is None:
            font = self._open(file, size)
            self._fonts[(file, size)] = font
        return font

    def _open(self, file: FontFile | None, size: int) -> Font:
        if file is not None:
            try:
                return ImageFont.truetype(str(file.path), size, index=file.index)
            except OSError as exc:
                if file not in self._warned:
                    self._warned.add(file)
                    logger.warning("font not loaded; using the built-in font", extra={"font_path": str(file.path), "error": str(exc)})
        return ImageFont.load_default(size=size)

    def _missing(self, file: FontFile | None, size: int, text: str) -> set[str]:
        """The visible characters of `text` the face has no glyph for (it draws them with its
        "missing glyph" shape, the same as a noncharacter)."""
        font = self._load(file, size)
        no_glyph = glyph_shape(font, _NO_GLYPH)
        out: set[str] = set()
        for ch in set(text):
            if ch.isspace():
                continue
            key = (file, size, ch)
            ok = self._covers.get(key)
            if ok is None:
                ok = self._covers[key] = glyph_shape(font, ch) != no_glyph
            if not ok:
                out.add(ch)
        return out


def glyph_shape(font: Font, ch: str) -> tuple[tuple[int, int], bytes]:
    """The mask `font` draws `ch` with (size and pixels)."""
    mask = font.getmask(ch)
    return mask.size, bytes(mask)
