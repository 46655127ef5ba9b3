"""The LLM-judged relative score of a model against a reference (Lion's Vicuna-80 protocol): a job
(lion_distill.evaluate.job) and a stage of the Lion loop (lion_distill.evaluate.evaluation.evaluate)."""
