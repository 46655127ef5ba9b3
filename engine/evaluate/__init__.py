"""The LLM-judged relative score of a model against a reference (Lion's Vicuna-80 protocol): a job
(engine.evaluate.job) and a stage of the Lion loop (engine.evaluate.evaluation.evaluate)."""
