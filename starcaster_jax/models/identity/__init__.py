"""Identity conditioning (DESIGN §2, "identity"): the soft identity constraint.

* ``IdentityProjector`` — 512-d embedding -> ``N_id`` cross-attention tokens (lives in
  ``models.conditioning`` with the other projectors; re-exported here).
* ``Arc2FaceIdentityEncoder`` — the Arc2Face import option: CLIP text encoder with the ArcFace
  embedding substituted for the ``id`` token of "photo of a id person" (``clip_text``).
* ``IdentityEncoder`` — images -> embeddings: ``OnnxArcFace`` (a user's insightface model) or
  ``BuiltinIdentityEncoder`` (trained here with the ArcFace margin loss).
* ``verification_metrics`` — TAR@FAR and rank-1 of embeddings.
"""
from starcaster_jax.models.conditioning import IdentityProjector
from starcaster_jax.models.identity.builtin import (
                                                    ArcFaceHead,
                                                    ArcFaceModel,
                                                    BuiltinIdentityConfig,
                                                    BuiltinIdentityEncoder,
                                                    arcface_loss,
                                                    make_optimizer,
                                                    train_step,
)
from starcaster_jax.models.identity.clip_text import (
                                                    ARC2FACE_PROMPT,
                                                    Arc2FaceIdentityEncoder,
                                                    CLIPTextConfig,
                                                    CLIPTextModel,
                                                    arc2face_prompt_ids,
                                                    substitute_token,
)
from starcaster_jax.models.identity.faces import (
                                                    ARCFACE_TEMPLATE,
                                                    HAAR_ENLARGE,
                                                    HAAR_SHIFT,
                                                    FaceNotFoundError,
                                                    ImageReadError,
                                                    align_face,
                                                    arcface_template,
                                                    crop_box,
                                                    detect_faces,
                                                    face_crops,
                                                    load_image,
                                                    similarity_transform,
)
from starcaster_jax.models.identity.metrics import tar_at_far, verification_metrics
from starcaster_jax.models.identity.onnx_arcface import IdentityEncoder, OnnxArcFace, normalize_rows

__all__ = [
    "ARC2FACE_PROMPT", "ARCFACE_TEMPLATE", "Arc2FaceIdentityEncoder", "ArcFaceHead", "ArcFaceModel",
    "BuiltinIdentityConfig", "BuiltinIdentityEncoder", "CLIPTextConfig", "CLIPTextModel",
    "FaceNotFoundError", "HAAR_ENLARGE", "HAAR_SHIFT", "IdentityEncoder", "IdentityProjector",
    "ImageReadError", "OnnxArcFace", "align_face", "arc2face_prompt_ids", "arcface_loss",
    "arcface_template", "crop_box", "detect_faces", "face_crops", "load_image", "make_optimizer",
    "normalize_rows", "similarity_transform", "substitute_token", "tar_at_far", "train_step",
    "verification_metrics",
]
