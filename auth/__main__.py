"""`python -m video2mp3.auth` runs the auth service (auth/server.py);
`python -m video2mp3.auth keys|users ...` runs an admin command (auth/cli.py)."""
from __future__ import annotations

import sys


def main() -> None:
    if len(sys.argv) > 1:
        from video2mp3.auth import cli

        sys.exit(cli.main(sys.argv[1:]))
    from video2mp3.auth import server

    server.serve()


if __name__ == "__main__":
    main()
