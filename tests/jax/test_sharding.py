"""Sharded parameters on a 2-device CPU mesh give the unsharded result, and the optimizer state
follows the params' sharding (eager init, Explicit mesh types, a scanned loop).

The device count is an XLA flag read once, when jax starts, so the check runs in a fresh
Python process (``_sharded_check.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import adamp_jax

# XLA's abort when the in-process all-reduce waits forever (see _sharded_check.py): a hang of
# the CPU runtime under load, not a wrong result, so that failure alone is retried.
RENDEZVOUS_HANG = "to join the rendezvous"
ATTEMPTS = 3


def test_two_device_mesh_gives_the_unsharded_result_and_state_follows_params():
    script = Path(__file__).with_name("_sharded_check.py")
    backends = str(Path(adamp_jax.__file__).resolve().parents[1])
    root = str(Path(__file__).resolve().parents[2])
    path = [root, backends, os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    for _ in range(ATTEMPTS):
        out = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
        )
        if out.returncode == 0 or RENDEZVOUS_HANG not in out.stderr:
            break
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sharded == unsharded" in out.stdout
    assert "state follows params" in out.stdout
