"""converter/id3.py alone: which tags an MP3 gets, and the tag's size read back.
(FFmpeg reads the tags back from real MP3s in test_transcode.py.)"""
from __future__ import annotations

from video2mp3.converter import id3


def test_tags_from_metadata_the_containers_first():
    tags = id3.tags_for({"TITLE": "stream title", "artist": "a"}, {"title": "container title", "date": "1999-02-03"},
                        "dir/file.mp4")
    assert tags == {"title": "container title", "artist": "a", "year": "1999"}


def test_title_from_the_file_name_else():
    assert id3.tags_for({}, {"title": "  "}, "C:\\videos\\my clip.final.mov") == {"title": "my clip.final"}
    assert id3.tags_for({}, {}, "") == {}


def test_a_built_tag_reads_back_its_size():
    tag = id3.build_id3v2({"title": "Ünïcødé ✓", "artist": "plain", "unknown": "dropped"})
    assert tag.startswith(b"ID3\x03\x00")
    assert id3.id3v2_size(tag + b"\xff\xfb") == len(tag)
    assert b"TIT2" in tag
    assert b"dropped" not in tag
    assert id3.build_id3v2({}) == b""
    assert id3.id3v2_size(b"\xff\xfb\x90\x64") == 0
