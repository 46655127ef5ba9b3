"""The prompts of pairwise judging: Lion's referee and the evaluation's judges.

Referee and judge prompts are the reference code's text, character for character
(tests/reference/ holds the copies, with provenance and licence, that the tests compare
them with):

- Lion's referee (YJiangcm/Lion `src/chatgpt_referee.py`, `gen_prompt`, MIT): the
  explanation first, then "Score of the Assistant 1: <score>" / "Score of the Assistant
  2: <score>". Its rubric lines keep the four-space indent of the original's
  triple-quoted string: that is what Lion sent.
- FastChat's three judge prompts (lm-sys/FastChat `fastchat/eval/table/prompt.jsonl`,
  Apache-2.0), which `reviewer.jsonl` routes by question category: general (scores on
  the first line), coding (a code review, scores on the first line), math (solve first,
  then the scores as a Python tuple).

The question shown carries the row's `input`, which the original code dropped.
"""

# Lion's and FastChat's system message alike.
REFEREE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."

LION_REFEREE_TEMPLATE = (
    "[Instruction]\n{instruction}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n{prompt}\n"
)
LION_REFEREE_RULES = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "instruction displayed above.\n"
    "    \n"
    "    Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
    "\n"
    "    Please first provide a comprehensive explanation of your evaluation, avoiding any potential bias and "
    "ensuring that the order in which the responses were presented does not affect your judgment. Then, output "
    "two lines indicating the scores for Assistant 1 and 2, respectively.\n"
    "\n"
    "    Output with the following format:\n"
    "    Evaluation evidence: <your evaluation explanation here>\n"
    "    Score of the Assistant 1: <score>\n"
    "    Score of the Assistant 2: <score>"
)

# FastChat's `prompt_template`, the same for its three prompts.
FASTCHAT_TEMPLATE = (
    "[Question]\n{question}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n{prompt}\n\n"
)
# FastChat's `defaults.prompt` of prompt_id 1 (general), 2 (coding), 3 (math).
FASTCHAT_RULES = {
    "general": (
        "We would like to request your feedback on the performance of two AI assistants in response to the "
        "user question displayed above.\n"
        "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
        "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
        "Please first output a single line containing only two values indicating the scores for Assistant 1 and 2, "
        "respectively. The two scores are separated by a space. In the subsequent line, please provide a "
        "comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the order in "
        "which the responses were presented does not affect your judgment."
    ),
    "coding": (
        "Your task is to evaluate the coding abilities of the above two assistants. They have been asked to "
        "implement a program to solve a given problem. Please review their code submissions, paying close attention "
        "to their problem-solving approach, code structure, readability, and the inclusion of helpful comments.\n\n"
        "Please ensure that the assistants' submissions:\n\n"
        "1. Correctly implement the given problem statement.\n"
        "2. Contain accurate and efficient code.\n"
        "3. Include clear and concise comments that explain the code's logic and functionality.\n"
        "4. Adhere to proper coding standards and best practices.\n\n"
        "Once you have carefully reviewed both submissions, provide detailed feedback on their strengths and "
        "weaknesses, along with any suggestions for improvement. You should first output a single line containing "
        "two scores on the scale of 1-10 (1: no code/no sense; 10: perfect) for Assistant 1 and 2, respectively. "
        "Then give extra comments starting from the next line."
    ),
    "math": (
        "We would like to request your feedback on the mathematical proficiency of two AI assistants regarding the "
        "given user question displayed above.\n"
        "First, please solve the problem independently, without referring to the answers provided by Assistant 1 "
        "and Assistant 2.\n"
        "Afterward, please examine the problem-solving process of Assistant 1 and Assistant 2 step-by-step to ensure "
        "their correctness, identifying any incorrect steps if present. Your evaluation should take into account not "
        "only the answer but also the problem-solving steps.\n"
        "Finally, please output a Python tuple containing two numerical scores for Assistant 1 and Assistant 2, "
        "ranging from 1 to 10, respectively. If applicable, explain the reasons for any variations in their scores "
        "and determine which assistant performed better."
    ),
}
