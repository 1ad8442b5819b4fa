"""`make demo`: the newcomer's first command.

Planned steps: (1) build the built-in demo corpus, (2) train the built-in encoders,
(3) train stages 1 -> 2 -> 3 at the `demo` variant, (4) write demo_out/{animate,synthesize,orbit}.mp4.
Step 1 works today; steps 2-4 need the encoder launcher, the training loop and the generator
(issues 4, 5 and 6), which have not landed — the demo stops there with a clear message rather
than pretending.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="demo_work")
    ap.add_argument("--out", default="demo_out")
    a = ap.parse_args(argv)
    from data_pipelines.synthetic import build
    data_dir = os.path.join(a.workdir, "data")
    rc = build.main(["--out", data_dir, "--preset", "demo"])
    if rc:
        return rc
    raise NotImplementedError(
        "make demo: the corpus is built in " + data_dir + "; training the built-in encoders, the "
        "three stages and writing the demo videos need launch/train_encoders.py, launch/train.py and "
        "launch/generate.py, which have not landed yet (issues 4-6).")


if __name__ == "__main__":
    sys.exit(main())
