"""Training of the seven built-in encoders on the built-in corpus (``python -m
launch.train_encoders``), one module an encoder:

  vae        frames <-> latents                                           vae.py
  audio      speech -> viseme-aware features                              audio.py
  identity_* ArcFace-margin face embeddings (cond: conditions the         identity.py
             denoiser; eval: only evaluates it)
  lip_*      per-frame viseme readers of mouth crops (loss: frozen inside lip.py
             the lip-reading loss; eval: only evaluates)
  pose_eval  head yaw/pitch/roll from a frame (only evaluates motion)     pose.py

``corpus.py`` reads the corpus, ``common.py`` holds the schedules, compile pool, optimiser, step
and the job loop they share, ``driver.py`` runs them in order and saves each with
``starcaster_jax.models.builtin_encoders.save`` under ``<workdir>/encoders/<name>/``.

Held-out metrics, on the TEST identities (split ``test_video``), chance levels alongside:
  vae        PSNR (dB, peak-to-peak 2) of posterior-mode reconstructions of test frames
  audio      per-frame viseme accuracy from speech; chance = majority-class frequency
  identity_* TAR at FAR=1e-2 over cross-clip pairs of test-identity frames, and rank-1
             (the nearest frame of another clip shows the same identity); chance TAR = FAR,
             chance rank-1 = the rate at which a random other-clip frame shares the identity
  lip_*      per-frame viseme accuracy from mouth crops; chance = majority-class frequency
  pose_eval  mean absolute (yaw, pitch, roll) error in degrees on test frames; chance = the
             error of always answering the training frames' mean pose
"""
from starcaster_jax.models.builtin_encoders import ENCODER_NAMES
from starcaster_jax.training.encoders.common import VARIANT_SCALE, Schedule, schedules
from starcaster_jax.training.encoders.corpus import CorpusError, load_corpus
from starcaster_jax.training.encoders.driver import Result, format_table, module_configs, train
from starcaster_jax.training.encoders.identity import identity_test_set
