"""What `make run` and Stack read: the services' own settings classes (so
AUTH_PORT, MEDIA_PORT, GRACE_SECONDS... are declared once, where the service
reads them) plus the launcher's own variables."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from localmesh.processes import SECANTUS_COMPACT_SECONDS
from video2mp3.auth.config import AuthConfig
from video2mp3.converter.config import ConverterConfig
from video2mp3.core.settings import group, setting
from video2mp3.gateway.config import GatewayConfig
from video2mp3.ops.envoy_config import EnvoySettings

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    auth: AuthConfig = group(AuthConfig)
    gateway: GatewayConfig = group(GatewayConfig)
    converter: ConverterConfig = group(ConverterConfig)
    envoy: EnvoySettings = group(EnvoySettings)
    # The embedded SecantusDB, started when MONGO_URI is unset.
    mongo_port: int = setting("MONGO_PORT", 27017, minimum=1, help=(
        "port of the embedded SecantusDB that `make run` starts when `MONGO_URI` is unset"))
    mongo_compact_s: float = setting("MONGO_COMPACT_S", SECANTUS_COMPACT_SECONDS, minimum=0, help=(
        "how often the embedded SecantusDB gives the space of deleted videos back to the disk "
        "(WiredTiger's online compaction of its files; 0: never, and its folder stays at the most "
        "it ever held)"))

    @property
    def mongo_data_dir(self) -> Path:
        """MONGO_DATA_DIR (declared in core/settings.MongoSettings), else ./data/mongo."""
        return self.gateway.mongo.data_dir or ROOT / "data" / "mongo"

    @property
    def grace_seconds(self) -> float:
        """The longest shutdown grace of the services (each waits its own)."""
        return max(self.auth.grace_seconds, self.gateway.grace_seconds, self.converter.grace_seconds)
