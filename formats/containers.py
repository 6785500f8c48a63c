"""Which kind of media file a file is, from its first bytes ("magic").

    identify(head) -> Container | None

The signatures of the containers and audio files people upload. The gateway
asks which uploads can be read while they arrive (gateway/container_sniff.py);
the converter, whether a file FFmpeg refuses is a damaged media file or none
at all (converter/transcode.py). HEAD_BYTES tell them all apart, except
MPEG-TS, which is confirmed by the next packet's sync byte once head reaches
it (TS_PACKET + 1 bytes).
"""
from __future__ import annotations

import enum

from video2mp3.formats import isobmff, mpeg_audio

HEAD_BYTES = 12
TS_PACKET = 188  # an MPEG-TS packet: a 0x47 sync byte every 188 bytes
_TS_SYNC = 0x47


class Container(enum.Enum):
    MP4 = "ISO-BMFF/QuickTime"   # MP4, MOV, M4A, 3GP: a leading box type at bytes 4..8
    MATROSKA = "Matroska/WebM"   # EBML
    MPEG_TS = "MPEG-TS"
    MPEG_PS = "MPEG-PS"
    FLV = "FLV"
    OGG = "Ogg"
    FLAC = "FLAC"
    WAV = "WAV"                  # RIFF WAVE
    RIFF = "RIFF"                # AVI and the other RIFF forms
    ASF = "ASF"                  # WMV, WMA
    CAF = "CAF"
    AIFF = "AIFF"                # IFF FORM
    REALMEDIA = "RealMedia"
    ID3 = "ID3"                  # an ID3v2 tag, then MP3 (or AAC) frames
    MPEG_AUDIO = "MPEG audio"    # frames from byte 0: MP3, MP2
    ADTS = "ADTS"                # AAC frames from byte 0


_SIGNATURES = (
    (b"\x1a\x45\xdf\xa3", Container.MATROSKA),
    (b"OggS", Container.OGG),
    (b"FLV", Container.FLV),
    (b"fLaC", Container.FLAC),
    (b"ID3", Container.ID3),
    (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", Container.ASF),
    (b"\x00\x00\x01\xba", Container.MPEG_PS),
    (b"caff", Container.CAF),
    (b"FORM", Container.AIFF),
    (b".RMF", Container.REALMEDIA),
)


def identify(head: bytes) -> Container | None:
    """The container the file whose first bytes are `head` is, or None."""
    if head[4:8] in isobmff.LEADING:
        return Container.MP4
    if head[:1] == bytes((_TS_SYNC,)) and (len(head) <= TS_PACKET or head[TS_PACKET] == _TS_SYNC):
        return Container.MPEG_TS
    if head.startswith(b"RIFF"):
        return Container.WAV if head[8:12] == b"WAVE" else Container.RIFF
    for magic, container in _SIGNATURES:
        if head.startswith(magic):
            return container
    if mpeg_audio.is_frame_header(head):
        return Container.MPEG_AUDIO
    if mpeg_audio.is_adts_header(head):
        return Container.ADTS
    return None
