"""Distilling step-by-step (arXiv 2305.02301): data with PaLM rationales, label
accuracy. Training is `engine.train.train_seq2seq_multitask`."""
from engine.step_by_step.data import Split, extract_rationale, load_split, train_valid_split
from engine.step_by_step.evaluate import accuracy, equation_value, predict_labels

__all__ = ["Split", "accuracy", "equation_value", "extract_rationale", "load_split", "predict_labels", "train_valid_split"]
