"""core/settings.py and the settings classes built on it: pure, no servers."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from localmesh.settings import MeshSettings
from video2mp3.auth.config import AuthConfig
from video2mp3.auth.login_limits import Limits
from video2mp3.converter.config import CPUS, ConverterConfig
from video2mp3.core.settings import (
    MysqlSettings,
    RabbitSettings,
    as_env,
    group,
    is_set,
    load,
    setting,
)
from video2mp3.gateway.config import GatewayConfig
from video2mp3.ops.envoy_config import EnvoySettings


@dataclasses.dataclass(frozen=True)
class Inner:
    name: str = setting("T_NAME", "inner")


@dataclasses.dataclass(frozen=True)
class Sample:
    count: int = setting("T_COUNT", 3, minimum=1)
    ratio: float = setting("T_RATIO", 0.5)
    flag: bool = setting("T_FLAG", False)
    path: Path = setting("T_PATH", Path("/tmp/x"))
    mode: Literal["auto", "on", "off"] = setting("T_MODE", "auto")
    word: str = setting("T_WORD", "default")
    empty_ok: str = setting("T_EMPTY_OK", "guest", allow_empty=True)
    maybe: int | None = setting("T_MAYBE", None)
    key: str = setting("T_KEY", "k", secret=True)
    inner: Inner = group(Inner)


def test_defaults_when_unset():
    assert load(Sample, {}) == Sample()


def test_values_are_converted_by_type():
    s = load(Sample, {"T_COUNT": " 7 ", "T_RATIO": "1.5", "T_FLAG": "yes", "T_PATH": "/data",
                      "T_MODE": "ON", "T_WORD": " spaced ", "T_MAYBE": "4"})
    assert (s.count, s.ratio, s.flag, s.path, s.mode, s.word, s.maybe) == (
        7, 1.5, True, Path("/data"), "on", " spaced ", 4)


def test_blank_means_default_unless_empty_is_allowed():
    s = load(Sample, {"T_COUNT": "", "T_WORD": "  ", "T_EMPTY_OK": "", "T_MAYBE": ""})
    assert (s.count, s.word, s.empty_ok, s.maybe) == (3, "default", "", None)


@pytest.mark.parametrize(("env", "message"), [
    ({"T_COUNT": "x"}, "T_COUNT must be an integer, got 'x'"),
    ({"T_COUNT": "0"}, "T_COUNT must be at least 1, got '0'"),
    ({"T_RATIO": "fast"}, "T_RATIO must be a number, got 'fast'"),
    ({"T_FLAG": "maybe"}, "T_FLAG must be true or false, got 'maybe'"),
    ({"T_MODE": "sometimes"}, "T_MODE must be one of auto, on, off, got 'sometimes'"),
    ({"AUTH_PORT": "x"}, "AUTH_PORT must be an integer, got 'x'"),
])
def test_a_bad_value_exits_with_one_line(env, message):
    cls = MeshSettings if "AUTH_PORT" in env else Sample
    with pytest.raises(SystemExit) as info:
        load(cls, env)
    assert str(info.value) == message


def test_nested_groups_read_the_same_mapping():
    s = load(Sample, {"T_NAME": "outer-env"})
    assert s.inner.name == "outer-env"


def test_reads_the_given_mapping_not_os_environ(monkeypatch):
    monkeypatch.setenv("T_COUNT", "9")
    assert load(Sample, {}).count == 3
    assert load(Sample).count == 9


def test_secrets_stay_out_of_repr():
    assert "s3cret" not in repr(load(Sample, {"T_KEY": "s3cret"}))
    assert "s3cret" not in repr(load(MysqlSettings, {"MYSQL_PASSWORD": "s3cret"}))


def test_is_set_and_as_env():
    assert not is_set(Sample, "word", {"T_WORD": " "})
    assert is_set(Sample, "word", {"T_WORD": "a"})
    rabbit = load(RabbitSettings, {"RABBITMQ_PORT": "5673", "RABBITMQ_PASSWORD": ""})
    assert as_env(rabbit, "port", "password") == {"RABBITMQ_PORT": "5673", "RABBITMQ_PASSWORD": ""}
    assert load(RabbitSettings, as_env(rabbit)) == rabbit


# ------------------------------------------------------- the services' classes

def test_service_defaults_match_the_documented_ones():
    auth = load(AuthConfig, {})
    assert (auth.port, auth.grace_seconds, auth.token_ttl_seconds) == (50051, 5.0, 3600)
    assert (auth.mysql.host, auth.mysql.port, auth.mysql.user, auth.mysql.password, auth.mysql.db) == (
        "127.0.0.1", 3306, "root", "", "video2mp3")
    assert (auth.environment.name, auth.environment.production, auth.keys_dir) == ("development", False, None)
    assert (auth.keys_reload_s, auth.key_activate_after_s, auth.allow_signup) == (10.0, 120.0, True)
    assert auth.login_limits == Limits(5, 20, 900.0, 1.0, 900.0)
    assert auth.media.addr == "127.0.0.1:50052"
    gw = load(GatewayConfig, {})
    assert (gw.port, gw.grace_seconds, gw.auth.addr, gw.max_upload_bytes) == (
        50052, 10.0, "127.0.0.1:50051", 2 * 1024**3)
    assert (gw.rabbit.queue, gw.rabbit.password, gw.mongo.timeout_ms) == ("video", "guest", 3000)
    assert (gw.jwks_refresh_s, gw.jwks_min_refetch_s, gw.user_cache_ttl_s, gw.user_cache_stale_s) == (
        60.0, 10.0, 30.0, 600.0)
    conv = load(ConverterConfig, {})
    assert (conv.workers, conv.overlap_mode, conv.lease_s) == (CPUS, "auto", 15.0)
    envoy = load(EnvoySettings, {})
    assert (envoy.port, envoy.admin_port, envoy.concurrency) == (8000, 9901, 2)
    assert envoy.rate_limits() == {}  # the template's


def test_converter_workers_and_overlap_mode():
    assert load(ConverterConfig, {"CONVERTER_WORKERS": "0"}).workers == 1
    assert load(ConverterConfig, {"CONVERTER_OVERLAP": "on"}).overlap_mode == "on"
    with pytest.raises(SystemExit, match="CONVERTER_OVERLAP"):
        load(ConverterConfig, {"CONVERTER_OVERLAP": "sometimes"})


def test_one_variable_is_read_alike_by_every_class():
    env = {"AUTH_PORT": "15051", "AUTH_ADDR": "auth:15051", "MEDIA_ADDR": "gateway:15052",
           "RABBITMQ_HOST": "mq", "GRACE_SECONDS": "2"}
    mesh = load(MeshSettings, env)
    assert mesh.auth.port == 15051
    assert mesh.gateway.auth.addr == mesh.envoy.auth.addr == "auth:15051"
    assert mesh.auth.media.addr == mesh.envoy.media.addr == "gateway:15052"
    assert mesh.gateway.rabbit == mesh.converter.rabbit == load(RabbitSettings, env)
    assert mesh.grace_seconds == 2.0
    assert load(MeshSettings, {}).grace_seconds == 10.0  # auth's 5, the others' 10


def test_big_files_settings():
    gw, conv = load(GatewayConfig, {}), load(ConverterConfig, {})
    assert (gw.storage_reserve_mb, gw.storage_reserve_bytes, gw.mongo.data_dir) == (512, 512 * 2**20, None)
    assert conv.nice == 10
    assert load(ConverterConfig, {"CONVERTER_NICE": "0"}).nice == 0
    # MONGO_DATA_DIR is declared once (MongoSettings): where make run keeps its
    # store is where the gateway measures free space.
    env = {"MONGO_DATA_DIR": "/srv/mongo", "STORAGE_RESERVE_MB": "100"}
    mesh = load(MeshSettings, env)
    assert mesh.mongo_data_dir == mesh.gateway.mongo.data_dir == Path("/srv/mongo")
    assert mesh.gateway.storage_reserve_bytes == 100 * 2**20
    assert load(MeshSettings, {}).mongo_data_dir.parts[-2:] == ("data", "mongo")



def test_auth_production_and_limits():
    auth = load(AuthConfig, {"VIDEO2MP3_ENV": " Production ", "AUTH_KEYS_DIR": "/keys", "ALLOW_SIGNUP": "off",
                             "LOGIN_ACCOUNT_FAILURES": "3", "LOGIN_BLOCK_MAX_S": "60"})
    assert auth.environment.production
    assert auth.keys_dir == Path("/keys")
    assert not auth.allow_signup
    assert (auth.login_limits.account_failures, auth.login_limits.block_max_s) == (3, 60.0)
    with pytest.raises(SystemExit, match="VIDEO2MP3_ENV must be one of development, production"):
        load(AuthConfig, {"VIDEO2MP3_ENV": "prod"})
    with pytest.raises(SystemExit, match="LOGIN_ACCOUNT_FAILURES must be at least 1"):
        load(AuthConfig, {"LOGIN_ACCOUNT_FAILURES": "0"})
