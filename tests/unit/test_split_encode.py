"""One track encoded by several LAME encoders at once (converter/split_encode.py,
converter/mp3join.py), checked against a single encoder of the same audio.

The audio is made here: chords, noise bursts with sharp attacks (so LAME
switches to short blocks and drains its reservoir) and a little hiss. Joined
streams are decoded by FFmpeg with its log captured: a wrong reservoir or
window shape at a join shows as decoder errors or as a burst of error there.
"""

from __future__ import annotations

import io
import threading

import av
import av.logging
import numpy as np
import pytest

from testkit.media import analyse_mp3, make_media, mp3_bytes
from video2mp3.converter import info_frame, lame, mp3join, split_encode
from video2mp3.converter import transcode as transcode_module
from video2mp3.converter.split_encode import SEGMENT_FRAMES, SerialEncoder, SplitEncoder
from video2mp3.formats import mpeg_audio
from video2mp3.media.v1 import media_pb2

BATCH = 32 * 1152


def music(seconds: float, rate: int, channels: int, seed: int = 1) -> np.ndarray:
    """(channels, samples) float32 in -1..1."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    sig = np.zeros((channels, len(t)))
    for k, f in enumerate((220, 277, 330, 440, 554)):
        for c in range(channels):
            sig[c] += 0.05 * np.sin(2 * np.pi * f * (1 + 0.01 * c) * t + k)
    hit = int(0.15 * rate)
    envelope = np.exp(-np.arange(hit) / rate * 30)
    for start in np.arange(0, seconds, 0.37):
        i = int(start * rate)
        burst = rng.standard_normal(hit) * envelope * 0.4
        n = len(sig[0, i:i + hit])
        for c in range(channels):
            sig[c, i:i + n] += burst[:n] * (1 - 0.3 * c)
    sig += 0.01 * rng.standard_normal(sig.shape)
    return np.clip(sig, -1, 1).astype(np.float32)


def encode(pcm: np.ndarray, rate: int, *, threads: int, vbr: int | None = None, split=None,
           backend: str | None = None) -> tuple[bytes, SplitEncoder | None]:
    """Bare MP3 frames of `pcm`, by the fastest LAME installed unless `backend` says."""
    backend = lame.backend_name(backend)
    channels = pcm.shape[0]

    def open_encoder():
        return lame.open_encoder(rate, channels, 128, vbr, 3, backend)

    out = bytearray()
    sink: SplitEncoder | SerialEncoder
    if threads > 1:
        unit = 4 if lame.input_format(backend) == "fltp" else 2 * channels
        sink = SplitEncoder(open_encoder, mpeg_audio.samples_per_frame(rate), unit, out.extend,
                            threads, split or (lambda: True))
    else:
        sink = SerialEncoder(open_encoder(), out.extend)
    for start in range(0, pcm.shape[1], BATCH):
        part = pcm[:, start:start + BATCH]
        if lame.input_format(backend) == "fltp":
            planes = tuple(np.ascontiguousarray(p).tobytes() for p in part)
        else:
            planes = ((part.T * 32767).astype("<i2").tobytes(),)
        sink.encode(planes, part.shape[1])
    sink.finish()
    return bytes(out), sink if isinstance(sink, SplitEncoder) else None


def decode(mp3: bytes) -> tuple[np.ndarray, list[str]]:
    """(channels, samples) as FFmpeg decodes it, and what its decoder logged."""
    with av.logging.Capture() as logs, av.open(io.BytesIO(mp3), "r") as container:
        frames = [f.to_ndarray() for f in container.decode(audio=0)]
    errors = [message for level, _, message in logs if level <= av.logging.WARNING]
    return np.concatenate(frames, axis=1), errors


def frame_count(mp3: bytes) -> int:
    return len(mp3join.Frames(mp3))


CASES = [  # rate, channels, VBR quality (None: CBR), LAME build (None: the fastest installed)
    (48000, 2, None, None),
    (44100, 1, None, None),
    (44100, 2, 2, None),
    (22050, 2, None, None),  # MPEG-2: 576-sample frames, one granule
    (44100, 2, None, "lameenc"),  # 16-bit interleaved input: one plane
]


@pytest.mark.parametrize(("rate", "channels", "vbr", "backend"), CASES)
def test_a_split_encoding_plays_like_one_encoder(rate, channels, vbr, backend):
    frame = mpeg_audio.samples_per_frame(rate)
    seconds = 3.4 * SEGMENT_FRAMES * frame / rate  # three joins, the last segment short
    pcm = music(seconds, rate, channels)
    single, _ = encode(pcm, rate, threads=1, vbr=vbr, backend=backend)
    split, encoder = encode(pcm, rate, threads=2, vbr=vbr, backend=backend)

    assert encoder is not None
    assert encoder.joins == 3
    assert encoder.fallbacks == 0
    assert split != single
    # Same frame grid: same count, hence the same delay and padding.
    assert frame_count(split) == frame_count(single)
    a, a_errors = decode(single)
    b, b_errors = decode(split)
    assert a_errors == b_errors == []
    assert a.shape == b.shape

    # Around every join the split stream is as close to the source as the
    # single encoder's stream is (a glitch would be a burst of error there).
    delay = info_frame.LAME_ENCODER_DELAY + info_frame.DECODER_DELAY
    n = min(pcm.shape[1], a.shape[1] - delay)
    err_single = np.abs(a[:channels, delay:delay + n] - pcm[:, :n]).max(axis=0)
    err_split = np.abs(b[:channels, delay:delay + n] - pcm[:, :n]).max(axis=0)
    for k in (1, 2, 3):
        first = k * SEGMENT_FRAMES * frame
        window = slice(first - 2 * frame, first + (split_encode.WINDOW_FRAMES + 2) * frame)
        assert err_split[window].max() <= 1.5 * err_single[window].max() + 0.01, f"join {k}"
    # And everywhere: the whole decode differs from the single one by coding noise only.
    noise = np.sqrt(np.mean((b - a) ** 2))
    signal = np.sqrt(np.mean(a ** 2))
    assert noise < 0.2 * signal


def test_the_joined_frame_gets_its_reservoir_from_the_other_encoder(monkeypatch):
    """Joins where the reservoir is in use need the later encoder's bytes
    moved; with the earlier encoder's bytes left there the frame decodes to
    garbage, which the checks above would see."""
    rate, frame = 48000, 1152
    pcm = music(2.2 * SEGMENT_FRAMES * frame / rate, rate, 2, seed=7)
    split, encoder = encode(pcm, rate, threads=2)
    assert encoder is not None
    assert encoder.joins == 2
    frames = mp3join.Frames(split)
    used = [frames[k * SEGMENT_FRAMES + i].main_data_begin
            for k in (1, 2) for i in range(split_encode.WINDOW_FRAMES)]
    assert min(used) > 0  # every frame near the joins starts in the reservoir

    monkeypatch.setattr(mp3join, "splice", lambda a, i, b, j: a.buf[:a[i].offset])
    unmoved, _ = encode(pcm, rate, threads=2)
    good, bad = decode(split)[0], decode(unmoved)[0]
    assert bad.shape == good.shape
    assert np.abs(bad - good).max() > 0.5


def test_without_a_join_in_the_window_the_earlier_encoder_goes_on(monkeypatch):
    """The fallback: one encoder through everything, byte for byte."""
    monkeypatch.setattr(split_encode, "WINDOW_FRAMES", 0)  # no frame can qualify
    rate = 48000
    pcm = music(2.5 * SEGMENT_FRAMES * 1152 / rate, rate, 2)
    split, encoder = encode(pcm, rate, threads=2)
    assert encoder is not None
    assert encoder.joins == 0
    assert encoder.fallbacks == 2
    assert split == encode(pcm, rate, threads=1)[0]


def test_split_while_false_goes_on_with_one_encoder():
    rate = 48000
    pcm = music(2.5 * SEGMENT_FRAMES * 1152 / rate, rate, 2)
    asked = []

    def split() -> bool:
        asked.append(1)
        return len(asked) > 1  # no to the first segment, yes to the next

    out, encoder = encode(pcm, rate, threads=2, split=split)
    assert len(asked) == 2
    assert encoder is not None
    assert encoder.joins == 1
    single, _ = encode(pcm, rate, threads=1)
    assert frame_count(out) == frame_count(single)
    # Up to the second segment's join the stream is the single encoder's.
    head = mp3join.Frames(single)[2 * SEGMENT_FRAMES - 1].offset
    assert out[:head] == single[:head]


def test_memory_stays_bounded_when_one_encoder_goes_on():
    """The caller decodes far faster than LAME encodes. Split, each encoder
    holds at most its segment's PCM; once split() says no, the one encoder
    left holds a few batches, however long the track."""
    rate, frame, batch = 8000, 576, 32 * 576
    tone = np.sin(np.arange(batch) * 2 * np.pi * 440 / rate).astype(np.float32)
    backend = lame.backend_name()
    planes = ((tone.tobytes(),) if lame.input_format(backend) == "fltp"
              else ((tone * 32767).astype("<i2").tobytes(),))
    per_segment = SEGMENT_FRAMES * frame // batch
    answers = iter([True, True] + [False] * 1000)
    encoder = SplitEncoder(lambda: lame.open_encoder(rate, 1, 32, None, 3, backend), frame,
                           len(planes[0]) // batch, bytearray().extend, 2, lambda: next(answers))
    held = []
    for _ in range(12 * per_segment):  # 12 segments' worth: ~10 minutes
        encoder.encode(planes, batch)
        held.append(encoder.held)
    encoder.finish()
    assert encoder.joins == 2
    assert encoder.fallbacks == 0
    split, alone = held[:3 * per_segment], held[4 * per_segment:]
    assert max(split) <= 3 * (per_segment + 4)
    assert max(alone) <= split_encode.MAX_QUEUED


def test_transcode_with_two_encoders_is_gapless(tmp_path):
    """Through transcode(): the info frame's delay and padding still trim to the exact length."""
    seconds = 2.2 * SEGMENT_FRAMES * 1152 / 44100
    src = make_media(tmp_path / "long.m4a", container="ipod", video_codec=None,
                     duration=seconds, sample_rate=44100)
    with open(src, "rb") as f:
        one = mp3_bytes(f, filename="long.m4a")
    with open(src, "rb") as f:
        two = mp3_bytes(f, filename="long.m4a", encoders=2)
    assert two != one
    duration, freq, rate, channels = analyse_mp3(two)
    assert (rate, channels) == (44100, 2)
    assert abs(freq - 440) < 5
    assert duration == analyse_mp3(one)[0]


def test_a_track_of_one_segment_gets_no_pool(tmp_path, monkeypatch):
    """Nothing to split in a clip shorter than a segment: no encoder pool, no
    threads to start, the single encoder's bytes."""
    made = []

    class Counted(SplitEncoder):
        def __init__(self, *a, **kw):
            made.append(self)
            super().__init__(*a, **kw)

    monkeypatch.setattr(transcode_module, "SplitEncoder", Counted)
    src = make_media(tmp_path / "clip.m4a", container="ipod", video_codec=None, duration=5.0)
    with open(src, "rb") as f:
        two = mp3_bytes(f, filename="clip.m4a", encoders=2)
    assert made == []
    with open(src, "rb") as f:
        assert mp3_bytes(f, filename="clip.m4a") == two


def test_an_error_stops_every_encoder(tmp_path):
    src = make_media(tmp_path / "long.m4a", container="ipod", video_codec=None,
                     duration=2.5 * SEGMENT_FRAMES * 1152 / 48000)
    calls = []

    def cancel(fraction: float) -> None:
        calls.append(fraction)
        if fraction > 0.5:
            raise RuntimeError("cancelled")

    with open(src, "rb") as f, pytest.raises(RuntimeError, match="cancelled"):
        mp3_bytes(f, media_pb2.ConversionOptions(), filename="long.m4a",
                  encoders=2, on_progress=cancel)
    assert not [t for t in threading.enumerate() if t.name.startswith("lame")]
