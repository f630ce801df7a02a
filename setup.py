"""Everything about the package is in setup.cfg; this only adds a build step.

The Avro encoders generated from the canonical schemas (agent/avro_codegen.py) are
written when the package is built (wheel, sdist install or editable install), so the
running agent never compiles code from text it reads.
"""
import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithAvroEncoders(build_py):
    def run(self):
        # loaded by path: importing the agent package would need its run-time dependencies
        spec = importlib.util.spec_from_file_location("outpost_avro_codegen", ROOT / "agent" / "avro_codegen.py")
        codegen = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(codegen)
        codegen.write_module(ROOT / "avro", ROOT / "agent" / "_avro_encoders.py")
        super().run()


setup(cmdclass={"build_py": BuildWithAvroEncoders})
