"""Pairwise judging, shared by Lion's referee and the evaluation's judge: the rubrics and
their prompts, review parsing, and judging pairs of answers in both orders."""
