"""The command line: help, the gallery job, the layer table."""

from __future__ import annotations

import re
import subprocess
import sys

from cnnlens.cli import main
from cnnlens.explain import METHODS


def test_help_explains_each_subcommand():
    out = subprocess.run([sys.executable, "-m", "cnnlens", "--help"], capture_output=True, text=True, check=True)
    for command in ("gallery", "train-default", "layers"):
        assert command in out.stdout


def test_gallery_renders_every_method(tmp_path, capsys):
    assert main(["gallery", str(tmp_path), "--images", "1"]) == 0
    index = (tmp_path / "index.html").read_text()
    for name, info in METHODS.items():
        assert any(p.name.endswith(f"_{name}.png") for p in tmp_path.iterdir()), name
        assert info.label.replace("×", "&#215;") in index or info.label in index
    assert "occlusion: label map" in index
    synthesis = (tmp_path / "synthesis.html").read_text()
    assert "synthesis.html" in index and synthesis.count("fooling image") >= 8 and "stage4:7" in synthesis
    assert len(list(tmp_path.glob("synth_lucid_*.png"))) == 8
    confidences = [float(p) for p in re.findall(r"class visualization; the model says \w+ with ([\d.]+)%", synthesis)]
    assert len(confidences) == 8 and min(confidences) >= 80, confidences  # every class's picture reaches it


def test_layers_and_bad_arguments(capsys):
    assert main(["layers"]) == 0
    assert "stage4" in capsys.readouterr().out
    assert main(["layers", "resnet9000"]) == 2
    assert "Unknown architecture 'resnet9000'" in capsys.readouterr().err
    assert main(["gallery", "/tmp/x", "--images", "0"]) == 2
    capsys.readouterr()
    # a size the model cannot take printed a header and exit code 0; a path that cannot be written a traceback
    assert main(["layers", "alexnet", "--size", "32"]) == 2
    assert "fails at (32, 32) after 'features.11'" in capsys.readouterr().err
    assert main(["layers", "resnet18", "--size", "0"]) == 2
    assert "input_size must be a positive int" in capsys.readouterr().err
    assert main(["gallery", "/dev/null/x", "--images", "1"]) == 2
    assert "Not a directory" in capsys.readouterr().err
