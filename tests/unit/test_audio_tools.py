"""Cover art, chapters and split by chapter (converter/cover_art.py,
converter/chapters.py, transcode's open_part), measured from outside: the
sources are made by the ffmpeg CLI with ffmetadata chapters, the MP3s read
by ffprobe and decoded by ffmpeg (testkit/outside.py)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from testkit import outside
from testkit.media import ReadSeekOnly, make_media
from video2mp3.converter import cover_art
from video2mp3.converter.transcode import transcode
from video2mp3.domain import mp3_files
from video2mp3.gateway import zip_download
from video2mp3.media.v1 import media_pb2

CHAPTERS = [(0, 2000, "Intro"), (2000, 5000, "Körper & Geist"), (5000, 6500, "End")]


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data) -> None:
        self.data += data

    def stored(self, patch) -> bytes:
        if patch:
            offset, new = patch
            self.data[offset : offset + len(new)] = new
        return bytes(self.data)


@pytest.fixture(scope="module")
def chaptered(tmp_path_factory):
    """Six and a half seconds in three chapters; the first 1.5 s are black."""
    return outside.make_chaptered_video(tmp_path_factory.mktemp("media") / "talk.mp4", CHAPTERS, black_ms=1500)


def pick(path, seekable: bool = True) -> cover_art.Picture | None:
    with open(path, "rb") as f:
        return cover_art.pick(f, seekable=seekable)


def convert(path, tmp_path, picture=None, **options):
    sinks = {1: Sink()}

    def open_part(track: int) -> Sink:
        sinks[track] = Sink()
        return sinks[track]

    path = Path(path)
    with ReadSeekOnly(path) as src:
        result = transcode(
            src,
            sinks[1],
            media_pb2.ConversionOptions(**options),
            path.name,
            picture=picture,
            open_part=open_part,
        )
    outs = []
    parts = result.parts or (None,)
    for n, part in enumerate(parts, 1):
        out = tmp_path / f"out{n}.mp3"
        out.write_bytes(sinks[n].stored(part.header_patch if part else result.header_patch))
        outs.append(out)
    return result, outs


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_chapters_kept_as_id3_chapters(tmp_path, ext):
    src = outside.make_chaptered_video(tmp_path / f"talk{ext}", CHAPTERS)
    _, (mp3,) = convert(src, tmp_path)
    assert outside.chapters(mp3) == CHAPTERS


def test_no_chapters_no_chapter_frames(tmp_path):
    src = make_media(tmp_path / "plain.mp4", duration=2.0)
    _, (mp3,) = convert(src, tmp_path)
    assert outside.chapters(mp3) == []
    assert [s["codec_type"] for s in outside.probe(mp3)["streams"]] == ["audio"]


def test_cover_is_a_detailed_frame_not_the_black_start(chaptered, tmp_path):
    picture = pick(chaptered)
    assert picture is not None
    assert picture.mime == "image/jpeg"
    assert len(picture.data) <= cover_art.MAX_BYTES
    _, (mp3,) = convert(chaptered, tmp_path, picture=(picture.mime, picture.data))
    streams = outside.probe(mp3)["streams"]
    pic = [s for s in streams if s["codec_type"] == "video"]
    assert pic
    assert pic[0]["codec_name"] == "mjpeg"
    assert pic[0]["disposition"]["attached_pic"] == 1
    width, height, mean, std = outside.picture_stats(outside.attached_picture(mp3, tmp_path / "cover.jpg"))
    assert width <= cover_art.MAX_WIDTH
    assert height <= cover_art.MAX_WIDTH
    assert mean > cover_art.MIN_MEAN, mean  # not the black start
    assert std > cover_art.MIN_STDDEV, std


def test_cover_of_an_upload_still_arriving_reads_front_to_back(chaptered):
    picture = pick(chaptered, seekable=False)
    assert picture is not None
    path_stats = outside.picture_stats(io.BytesIO(picture.data))
    assert path_stats[2] > cover_art.MIN_MEAN


def test_all_black_video_gets_no_picture(tmp_path):
    src = outside.make_chaptered_video(tmp_path / "dark.mp4", [(0, 2000, "Dark")], black_ms=2000)
    assert pick(src) is None


def test_sources_own_cover_wins(tmp_path):
    cover = outside.make_picture(tmp_path / "cover.jpg", size="300x300")
    src = outside.make_chaptered_video(tmp_path / "music.mp4", [(0, 2000, "Song")], black_ms=2000, cover=cover)
    picture = pick(src)
    assert picture is not None
    assert picture.data == cover.read_bytes()  # small already: kept as it is


def test_big_source_cover_is_scaled_down(tmp_path):
    cover = outside.make_picture(tmp_path / "cover.jpg", size="1400x1400")
    src = outside.make_chaptered_video(tmp_path / "music.mp4", [(0, 1000, "Song")], cover=cover)
    picture = pick(src)
    assert picture is not None
    assert len(picture.data) <= cover_art.MAX_BYTES
    width, height, _, _ = outside.picture_stats(io.BytesIO(picture.data))
    assert (width, height) == (500, 500)


def test_split_chapters_sample_exact(chaptered, tmp_path):
    result, outs = convert(chaptered, tmp_path, split_chapters=True, bitrate_kbps=128)
    assert [p.title for p in result.parts] == [t for _, _, t in CHAPTERS]
    rate = result.sample_rate
    lengths = [outside.decoded_samples(p) for p in outs]
    # Each part is its chapter, to the sample at the output rate; the last
    # takes whatever audio runs past its end (AAC's last frame).
    assert lengths[:-1] == [round((e - s) * rate / 1000) for s, e, _ in CHAPTERS[:-1]]
    assert lengths == [p.samples for p in result.parts]
    _whole_result, (whole,) = convert(chaptered, tmp_path / "..", bitrate_kbps=128)
    assert sum(lengths) == outside.decoded_samples(whole)
    for n, out in enumerate(outs, 1):
        tags = outside.probe(out)["format"]["tags"]
        assert tags["track"] == f"{n}/3"
        assert tags["title"] == CHAPTERS[n - 1][2]
        assert outside.chapters(out) == []  # the parts carry no chapter list


def test_split_without_chapters_is_one_mp3(tmp_path):
    src = make_media(tmp_path / "plain.mp4", duration=2.0)
    result, outs = convert(src, tmp_path, split_chapters=True)
    assert result.parts == ()
    assert len(outs) == 1


def test_part_names_are_safe_file_names():
    assert mp3_files.part_name("talk.mp4", 2, 12, 'Q&A: "why?" / <how>') == "talk - 02 - Q&A_ _why_ _ _how_.mp3"
    assert mp3_files.part_name("a/b.mkv", 7, 120, "") == "b - 007.mp3"
    assert mp3_files.single_name("holiday.MP4") == "holiday.mp3"


def _job(jid: str, filename: str, files: list[tuple[str, int]]) -> object:
    from bson import ObjectId

    from video2mp3.domain import jobs

    return jobs.Job(
        id=jid,
        user_id="u",
        user_email="",
        filename=filename,
        state=jobs.DONE,
        mp3_files=tuple(mp3_files.Mp3File(ObjectId(), n, 1, track=i + 1) for i, (n, _) in enumerate(files)),
    )


def test_zip_names_unique_and_split_jobs_in_folders():
    a = _job("a", "talk.mp4", [("talk.mp3", 1)])
    b = _job("b", "talk.mp4", [("talk.mp3", 1)])
    c = _job("c", "talk.mp4", [("talk - 01 - A.mp3", 1), ("talk - 02 - B.mp3", 1)])
    names = [e.arcname for e in zip_download.entries([a, b, c], folders=True)]  # type: ignore[list-item]
    assert names == ["talk.mp3", "talk (2).mp3", "talk/talk - 01 - A.mp3", "talk/talk - 02 - B.mp3"]


@pytest.mark.parametrize(
    ("raw", "ids"), [(["a", "b"], ["a", "b"]), (["a,b", "a"], ["a", "b"]), ([" a , ,b"], ["a", "b"])]
)
def test_zip_job_ids_repeated_or_comma_separated(raw, ids):
    assert zip_download.job_ids(raw) == ids


@pytest.mark.parametrize("raw", [[], [""], [",".join(str(i) for i in range(zip_download.MAX_JOBS + 1))]])
def test_zip_job_ids_refused(raw):
    from video2mp3.core.errors import InvalidArgument

    with pytest.raises(InvalidArgument) as e:
        zip_download.job_ids(raw)
    assert e.value.violations[0][0] == "job_ids"


def test_zip_stream_unzips_to_the_same_bytes(monkeypatch):
    blobs = {1: b"ID3" + bytes(range(256)) * 3000, 2: b"\xff\xfb" * 100_000}
    monkeypatch.setattr(zip_download, "_read", lambda db, fid: iter([blobs[fid][:5000], blobs[fid][5000:]]))
    entries = [zip_download.Entry("one.mp3", 1, len(blobs[1])), zip_download.Entry("two/2.mp3", 2, len(blobs[2]))]
    pieces = list(zip_download.stream(None, entries))
    assert len(pieces) > 2  # written as it goes, not as one buffer
    with zipfile.ZipFile(io.BytesIO(b"".join(pieces))) as z:
        assert z.namelist() == ["one.mp3", "two/2.mp3"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        assert z.read("one.mp3") == blobs[1]
        assert z.read("two/2.mp3") == blobs[2]


def test_chapters_past_the_audio_are_dropped(tmp_path):
    """A chapter list longer than the audio (a cut file, a wrong list): no
    MP3 without audio, and the track count says how many there are."""
    short = outside.make_chaptered_video(tmp_path / "short.mp4", [*CHAPTERS, (6600, 9000, "Gone")], seconds=6.5)
    assert len(outside.chapters(short)) == 4
    result, outs = convert(short, tmp_path, split_chapters=True)
    assert [p.title for p in result.parts] == [t for _, _, t in CHAPTERS]
    assert outside.probe(outs[-1])["format"]["tags"]["track"] == "3/3"


def test_trimmed_mp3_keeps_the_chapters_inside_the_trim(chaptered, tmp_path):
    """Chapters follow a trim: shifted to the MP3's first sample, cut at its
    ends, and the ones outside it dropped."""
    _result, (out,) = convert(chaptered, tmp_path, bitrate_kbps=128, start_ms=1000, end_ms=4000)
    assert outside.chapters(out) == [(0, 1000, "Intro"), (1000, 3000, "Körper & Geist")]


def test_split_of_a_trimmed_normalised_source(chaptered, tmp_path):
    """split_chapters with a trim and a loudness target: the parts are the
    chapters inside the trim, sample-exact, adding up to the trim's length."""
    result, outs = convert(chaptered, tmp_path, split_chapters=True, bitrate_kbps=128,
                           start_ms=1000, end_ms=5500, loudness_lufs=-16)
    assert [p.title for p in result.parts] == ["Intro", "Körper & Geist", "End"]
    rate = result.sample_rate
    lengths = [outside.decoded_samples(p) for p in outs]
    assert lengths[:2] == [round(1.0 * rate), round(3.0 * rate)]
    assert sum(lengths) == round(4.5 * rate)
