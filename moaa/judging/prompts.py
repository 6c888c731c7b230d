"""Every prompt moaa sends, as named constants, each with where it comes from."""

# Mixture-of-Agents "aggregate-and-synthesize" system prompt, verbatim from the reference implementation:
# togethercomputer/MoA, utils.py, inject_references_to_messages (commit 14c0f356, Apache-2.0). MoAA (ICML
# 2025) uses MoA's aggregator as is. The numbered responses follow it, one per line, as "\n{i}. {text}".
AGGREGATE_AND_SYNTHESIZE = """You have been provided with a set of responses from various open-source models to the latest user query. Your task is to synthesize these responses into a single, high-quality response. It is crucial to critically evaluate the information provided in these responses, recognizing that some of it may be biased or incorrect. Your response should not simply replicate the given answers but should offer a refined, accurate, and comprehensive reply to the instruction. Ensure your response is well-structured, coherent, and adheres to the highest standards of accuracy and reliability.

Responses from models:"""  # noqa: E501

# ------------------------------------------------------------------------------------------ MoA judge
# MoAA (ICML 2025) section "MoA as a reward model": each judge first selects the criteria most relevant to
# the instruction, then compares the responses; an aggregator LLM reads the judges' evaluations and gives
# the final preference. The paper describes these steps but does not publish its exact judge prompts, so
# the wording below is ours. The criteria list is the one the paper names as examples (helpfulness,
# accuracy, depth, safety, clarity, instruction following); the pairwise layout ([User Question],
# [The Start of Assistant A's Answer] ...) follows MT-Bench's "pair-v2" judge prompt (lm-sys/FastChat,
# fastchat/llm_judge/data/judge_prompts.jsonl, Apache-2.0), which MoAA's judges build on.
JUDGE_CRITERIA = (
    "helpfulness",
    "accuracy",
    "depth",
    "safety",
    "clarity",
    "instruction following",
)

# Step 1, per judge and prompt: pick the criteria. The answer is constrained to one of the
# "a, b, c" combinations of JUDGE_CRITERIA (vLLM structured output ``choice``), so it always parses.
SELECT_CRITERIA = """You are going to judge answers to the user question below. From this list of criteria: {criteria}
choose the {k} criteria that matter most for judging answers to this question. Reply with the {k} criteria only, separated by ", ".

[User Question]
{question}"""  # noqa: E501

# Step 2, per judge and ordered pair. The system message and the question come first and are the same for
# every pair of a prompt, so the engine's prefix cache reuses them across the n(n-1) calls. The output is
# constrained to "Evaluation: <one line>\nVerdict: A|B|tie" (vLLM structured output ``regex``).
JUDGE_SYSTEM = """Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the user question displayed below. Judge them on these criteria: {criteria}. Begin your evaluation by comparing the two responses and provide a short explanation on one line. Avoid any position biases and ensure that the order in which the responses were presented does not influence your decision. Do not allow the length of the responses to influence your evaluation. Be as objective as possible. Then output your final verdict on the next line, strictly in this format: "Verdict: A" if assistant A is better, "Verdict: B" if assistant B is better, and "Verdict: tie" for a tie."""  # noqa: E501

JUDGE_PAIR = """[User Question]
{question}

[The Start of Assistant A's Answer]
{answer_a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{answer_b}
[The End of Assistant B's Answer]"""

# Step 3 (mode "moa" only), per ordered pair: the aggregator judge reads every judge's evaluation and gives
# the final verdict, constrained to the choice A / B / tie. Ours, in the spirit of MoA's
# aggregate-and-synthesize prompt (the paper's aggregator-judge wording is not public).
AGGREGATE_JUDGMENTS = """You have been provided with the evaluations of several judges who compared two AI assistants' answers to the user question below. Some evaluations may be biased or wrong: weigh them critically, check them against the answers, and give the final verdict. Reply with exactly one of: A (assistant A is better), B (assistant B is better), tie."""  # noqa: E501

AGGREGATE_JUDGMENTS_USER = """{pair}

[Judges' Evaluations]
{evaluations}

Final verdict (A, B or tie):"""

# The MoA judge on a benchmark (evaluate job, judge with an aggregator): the aggregator gets the benchmark's
# own judge prompt with the judges' outputs appended after this header, and answers in the benchmark's own
# output format (constrained like the judges'). Ours, in the spirit of MoA's aggregate-and-synthesize prompt
# above; MoAA does not publish an aggregator-judge prompt for benchmarks.
AGGREGATE_BENCHMARK_JUDGMENTS = """[Other Judges' Evaluations]
{evaluations}

The evaluations above were written by other judges for this same task. Some of them may be biased or wrong: check them against the question and the answers, then give your own final judgment, strictly in the output format the task asks for."""  # noqa: E501
