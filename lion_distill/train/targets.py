"""What a label position holds: IGNORE where no loss is taken (prompts, padding), and which
task a step-by-step sequence trains (its label or its rationale). Constants only, so the step
code (lion_distill.train.step, flops) imports them without the tokenising side."""

IGNORE = -100
LABEL_TASK, RATIONALE_TASK = 0, 1
