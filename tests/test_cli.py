"""The ``kalm`` console script."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def kalm(*args):
    return subprocess.run([sys.executable, "-m", "kalm.cli", *args], capture_output=True, text=True)


def test_oracle_command_prints_a_table_and_json(tmp_path):
    frame = tmp_path / "frame.png"
    out = kalm("oracle", "--level", "easy", "--episodes", "4", "--seed", "3", "--frame", str(frame), "--json")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["easy"]["episodes"] == 4
    assert 0.0 <= report["easy"]["success_rate"] <= 1.0
    assert any(line.startswith("easy") for line in lines[:-1])
    image = np.asarray(Image.open(frame))
    assert image.shape == (256, 256, 3) and image.std() > 5


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("kalm")  # installed beside the interpreter
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "oracle" in out.stdout


def test_bad_arguments_exit_nonzero_with_a_message():
    out = kalm("oracle", "--episodes", "0")
    assert out.returncode == 2 and "--episodes 0" in out.stderr
    out = kalm("oracle", "--level", "medium")
    assert out.returncode == 2 and "medium" in out.stderr
