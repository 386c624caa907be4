"""pmap and jit-over-a-Mesh runs of Sign-In (fixed masks, RigL, SET) on 8 emulated CPU devices
(in a subprocess)."""
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_pmap_and_mesh_match_single_device_and_keep_sharding():
  script = os.path.join(os.path.dirname(__file__), "multidevice_signin_check.py")
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
  proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  for kind in ("signin", "rigl+signin", "set"):  # With RigL / SET: the same masks, too.
    assert f"{kind}: pmap: matches one device" in proc.stdout
    assert f"{kind}: jit-mesh: matches one device" in proc.stdout
  assert "sharded state: ok" in proc.stdout
