"""The digest a fit records with a policy's weights (train/worker.save_final), used by the broadcast only while
the weight files are the ones it hashed."""
from __future__ import annotations

import os
import shutil

from sitf_ray.rollout.engines.base import pack_state
from sitf_ray.rollout.weights import _recorded_digest, policy_payload, record_wire_digest


def test_recorded_digest_is_the_wire_digest_and_goes_stale_with_the_files(m0, tmp_path):
    folder = tmp_path / "policy"
    shutil.copytree(m0, folder)
    want = pack_state(policy_payload(folder)[1]).digest()
    record_wire_digest(folder)
    assert _recorded_digest(folder) == want
    weights = next(folder.glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1))     # rewritten weights: the record is stale
    assert _recorded_digest(folder) is None
