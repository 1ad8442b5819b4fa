"""Package layering: ``starcaster_jax.weights`` (importers) imports ``starcaster_jax.models``,
never the reverse, so the model code loads without the importers and no import cycle forms."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(REPO, "starcaster_jax", "models")

# Known violations still to remove, with what removes them: the test fails when one is fixed
# (drop it here) and when a new one appears.
PENDING = {
    "starcaster_jax/models/audio/encoder.py":
        "build_audio_encoder loads model.audio.wav2vec2_path itself; its callers "
        "(training/frozen.py, inference/loading.py) should call weights.wav2vec2.load_wav2vec2",
}


def _imports_weights(path: str) -> list[int]:
    """Line numbers of every import of ``starcaster_jax.weights`` (module level or local)."""
    tree = ast.parse(open(path).read(), path)
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        if any(n == "starcaster_jax.weights" or n.startswith("starcaster_jax.weights.") for n in names):
            lines.append(node.lineno)
    return lines


def test_no_model_module_imports_the_importers():
    found = {}
    for root, _, files in os.walk(MODELS):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                lines = _imports_weights(path)
                if lines:
                    found[os.path.relpath(path, REPO).replace(os.sep, "/")] = lines
    assert set(found) == set(PENDING), found


def test_model_modules_load_without_the_importers():
    """Every module under ``starcaster_jax.models`` imported in a fresh interpreter: no
    ``starcaster_jax.weights`` module is loaded, directly or through another package."""
    code = ("import importlib, pkgutil, sys, starcaster_jax.models as M\n"
            "for m in pkgutil.walk_packages(M.__path__, 'starcaster_jax.models.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(sorted(m for m in sys.modules if m.startswith('starcaster_jax.weights')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout
