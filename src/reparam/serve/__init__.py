"""Serving: the fused model's chosen deploy target over HTTP (LitServe), and predictions over image files."""

from .choice import ServedTarget, choose_target
from .model import Classifier, Prediction, build_target

__all__ = ["ServedTarget", "choose_target", "Classifier", "Prediction", "build_target", "serve"]


def serve(cfg):  # noqa: ANN001, ANN201 - imports LitServe only when a server is started
    from .server import serve as run

    return run(cfg)
