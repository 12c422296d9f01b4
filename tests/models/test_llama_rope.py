"""RoPE frequencies for every supported rope_type equal transformers' ROPE_INIT_FUNCTIONS."""

from __future__ import annotations

import numpy as np
import pytest

from linalign.models import rope
from linalign.models.base import UnsupportedConfigError

transformers = pytest.importorskip("transformers")

SCALINGS = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "yarn_mscale": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 0.707,
                    "mscale_all_dim": 0.707, "beta_fast": 16, "beta_slow": 2},
}


@pytest.mark.parametrize("name", sorted(SCALINGS))
@pytest.mark.parametrize("head_dim", [32, 64])
def test_inv_freq_matches_transformers(name, head_dim):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = dict(SCALINGS[name], rope_theta=50000.0)
    cfg = transformers.LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                                   max_position_embeddings=256, rope_parameters=dict(params))
    spec = rope.RopeSpec.from_hf(params, 10000.0, "test")
    ours, scale = rope.inv_freq_and_scale(spec, head_dim, 256)
    if params["rope_type"] == "default":
        # transformers computes default frequencies inside the rotary module
        ref = 1.0 / (50000.0 ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
        ref_scale = 1.0
    else:
        ref_t, ref_scale = ROPE_INIT_FUNCTIONS[params["rope_type"]](cfg, "cpu")
        ref = ref_t.numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=0)
    np.testing.assert_allclose(scale, ref_scale, rtol=1e-6, atol=0)


def test_unknown_rope_is_refused():
    with pytest.raises(UnsupportedConfigError, match="longrope"):
        rope.RopeSpec.from_hf({"rope_type": "longrope"}, 1e4, "test")
    with pytest.raises(UnsupportedConfigError, match="partial_rotary_factor"):
        rope.RopeSpec.from_hf({"rope_type": "default", "partial_rotary_factor": 0.5}, 1e4, "test")
    with pytest.raises(UnsupportedConfigError, match="surprise"):
        rope.RopeSpec.from_hf({"rope_type": "linear", "factor": 2.0, "surprise": 1}, 1e4, "test")
