"""Packaging facts a user relies on."""

import shutil
import subprocess
import sys
from pathlib import Path

import pyqueue


def test_unbuilt_source_tree_import_error_says_how_to_build(tmp_path):
    # A copy of the package without the compiled extension, as in a fresh clone.
    src = Path(pyqueue.__file__).parent
    dst = tmp_path / "pyqueue"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-c", "import pyqueue"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "ImportError" in proc.stderr
    assert "pip install ." in proc.stderr and "make build" in proc.stderr


def test_public_names_and_typing_marker():
    assert set(pyqueue.__all__) <= set(dir(pyqueue))
    package = Path(pyqueue.__file__).parent
    assert (package / "py.typed").exists()
    assert (package / "_native.pyi").exists()
    assert isinstance(pyqueue.__version__, str)
