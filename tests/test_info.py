"""The paper model is counted without allocation, and its spatial part is exactly SD-1.5's UNet."""
import subprocess
import sys

import pytest

from configs import stage2_audio
from launch.info import count_components

SD15_UNET_PARAMS = 859_520_964   # diffusers UNet2DConditionModel, SD-1.5 config
SD_VAE_PARAMS = 83_653_863       # diffusers AutoencoderKL, SD-1.5 config


def test_paper_counts_match_sd15():
    counts = count_components(stage2_audio.get_config("paper").model)
    assert counts["spatial"] == SD15_UNET_PARAMS
    assert counts["vae (frozen)"] == SD_VAE_PARAMS
    for k in ("temporal", "audio", "identity", "view", "context"):
        assert counts[k] > 0, k


@pytest.mark.parametrize("variant", ["tiny", "demo", pytest.param("small", marks=pytest.mark.slow)])
def test_variants_build_abstractly(variant):
    counts = count_components(stage2_audio.get_config(variant).model)
    assert counts["spatial"] > 0 and counts["temporal"] > 0


def test_info_cli_prints_table_and_rejects_misuse():
    out = subprocess.run([sys.executable, "launch/info.py", "--config=configs/stage2_audio.py:tiny"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "spatial" in out.stdout and "total" in out.stdout
    bad = subprocess.run([sys.executable, "launch/info.py", "--config=configs/stage2_audio.py:huge"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "huge" in (bad.stderr + bad.stdout)
