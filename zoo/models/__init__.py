"""The zoo's model families, registered with timm on import (``timm.create_model("kat_t")`` after ``import zoo``)."""

from zoo.models import inceptionnext, kat, nat, sequence, unireplknet
from zoo.models._registry import create_model, list_models, register_model
from zoo.models.inceptionnext import InceptionNeXt
from zoo.models.kat import KAT
from zoo.models.nat import NAT
from zoo.models.sequence import SequenceModel
from zoo.models.unireplknet import UniRepLKNet

__all__ = [
    "KAT",
    "NAT",
    "InceptionNeXt",
    "SequenceModel",
    "UniRepLKNet",
    "create_model",
    "inceptionnext",
    "kat",
    "list_models",
    "nat",
    "register_model",
    "sequence",
    "unireplknet",
]
