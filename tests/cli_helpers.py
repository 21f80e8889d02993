"""Running console commands as real processes, with their own data roots, for the CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cli_env(home: Path, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``SMOOTHSEG_*`` roots, with ``SMOOTHSEG_HOME=home`` plus ``extra_env``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMOOTHSEG_")}
    env["SMOOTHSEG_HOME"] = str(home)
    env.update(extra_env or {})
    return env


def run_cli(module: str, *args: str, home: Path, timeout: int = 300, extra_env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """Run ``python -m smoothseg.cli.<module> args`` with ``SMOOTHSEG_HOME=home`` (plus ``extra_env``) and capture
    its output."""
    env = cli_env(home, extra_env)
    return subprocess.run([sys.executable, "-m", f"smoothseg.cli.{module}", *args], capture_output=True,
                          encoding="utf-8", errors="replace", env=env, timeout=timeout)
