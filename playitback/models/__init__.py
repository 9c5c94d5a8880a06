"""Models: the MViTv2 encoder, temporal saliency, replay, the TemPr decoder and their composition."""
from playitback.models.build import build_model
from playitback.models.playitback import EncoderClassifier, PlayItBack

__all__ = ["EncoderClassifier", "PlayItBack", "build_model"]
