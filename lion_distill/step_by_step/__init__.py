"""Distilling step-by-step (arXiv 2305.02301) as a job: a teacher's few-shot chain-of-thought
rationales (or the released PaLM ones), T5 students trained three ways across fractions of the
training data, label accuracy on test. `lion_distill.step_by_step.job` composes the stages."""

from lion_distill.step_by_step.evaluate import accuracy, predict_labels

__all__ = ["accuracy", "predict_labels"]
