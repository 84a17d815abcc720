"""Training: evaluation, adaptive BatchNorm, LeGR's tau-step fine-tune and the resumable full fine-tune."""

from legr.training.bn import bn_batches, recalibrate_bn
from legr.training.evaluate import EvalResult, evaluate, model_device, predict_logits
from legr.training.config import FinetuneConfig, TrainConfig
from legr.training.loops import finetune, make_sgd, train_steps

__all__ = ["EvalResult", "FinetuneConfig", "bn_batches", "evaluate", "finetune", "make_sgd", "model_device",
           "predict_logits", "recalibrate_bn", "train_steps", "TrainConfig"]
