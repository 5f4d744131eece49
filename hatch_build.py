"""Hatch build hook: bundle the front end (js/ → cnnlens/static/) with esbuild at package build."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class FrontEndBuildHook(BuildHookInterface):
    PLUGIN_NAME = "frontend"

    def initialize(self, version: str, build_data: dict) -> None:
        js = Path(self.root) / "js"
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("Building cnnlens needs Node.js and npm (to bundle js/ with esbuild).")
        if not (js / "node_modules" / ".bin" / "esbuild").exists():
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=js, check=True)
        subprocess.run([npm, "run", "build"], cwd=js, check=True)
        build_data["artifacts"].extend(["cnnlens/static/widget.js", "cnnlens/static/widget.css",
                                        "cnnlens/static/require.js", "cnnlens/static/embed-amd.js"])
