"""Only a build hook; the project is described in pyproject.toml.

The stub packages (video2mp3.auth.v1, video2mp3.media.v1) live in gen/python, which is generated, never
committed. So that `pip install .` works on a fresh clone, building runs
tools/codegen.py first when the stubs are missing ([build-system] requires
grpcio-tools and googleapis-common-protos for it)."""
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.egg_info import egg_info

ROOT = Path(__file__).resolve().parent


def _generate() -> None:
    if not (ROOT / "gen" / "python" / "video2mp3" / "media" / "v1" / "__init__.py").exists():
        subprocess.check_call([sys.executable, str(ROOT / "tools" / "codegen.py"), str(ROOT / "gen")])


class BuildPy(build_py):
    def run(self):
        _generate()
        super().run()


class EggInfo(egg_info):  # metadata comes first and lists the package's files
    def run(self):
        _generate()
        super().run()


setup(cmdclass={"build_py": BuildPy, "egg_info": EggInfo})
