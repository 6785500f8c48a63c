"""A conversion's CPU budget against the real mesh (converter/limits.py): a
file that needs more CPU than CONVERTER_CPU_BUDGET_S ends FAILED with a
reason naming the limit, keeps no MP3, and the converter goes on converting.
The budget is lowered to 1 s and the file made to need several (a low-rate
source encoded at 48 kHz stereo keeps LAME busy)."""
from __future__ import annotations

from testkit.faults import SLOW_OPTIONS, Store, make_long_audio, user_client
from video2mp3.domain import jobs

SERVICES = ("auth", "gateway", "converter")


def test_a_conversion_over_its_cpu_budget_fails_saying_so(mesh_factory, tmp_path):
    stack = mesh_factory(services=SERVICES, CONVERTER_WORKERS=1, CONVERTER_EXPRESS_WORKERS=0,
                         EXPRESS_MAX_BYTES=0, CONVERTER_CPU_BUDGET_S=1, CONVERTER_OVERLAP="off")
    client = user_client(stack)
    heavy = client.upload(make_long_audio(tmp_path / "heavy.flac", 20), filename="heavy.flac", **SLOW_OPTIONS)
    small = client.upload(make_long_audio(tmp_path / "small.flac", 0.05), filename="small.flac")
    store = Store(stack.env["MONGO_URI"])
    try:
        doc = store.wait_final(heavy.job_id, timeout=180)
        assert doc["state"] == jobs.FAILED
        assert "CPU time limit of 1 s (CONVERTER_CPU_BUDGET_S)" in doc["error"], doc["error"]
        assert store.mp3_files(heavy.job_id) == []
        assert store.orphan_chunk_files() == set()
        # The worker goes on: the next job converts.
        store.assert_one_mp3(store.wait_final(small.job_id, timeout=120)["_id"])
    finally:
        store.close()
