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

# ------------------------------------------------------------------------------- benchmark judges
# The judge prompts of the published benchmarks, verbatim, for the evaluate job (moaa/benchmarks/ holds the
# scoring). Each is a byte-exact copy of the file named beside it, as listed in shared/data/SOURCES.md.

# AlpacaEval 2 judge (annotator weighted_alpaca_eval_gpt4_turbo: gpt-4-1106-preview, max_tokens 1,
# top_logprobs 5; the preference is read from the logprobs of "m" and "M", see
# benchmarks.alpaca_preference). Verbatim from tatsu-lab/alpaca_eval,
# src/alpaca_eval/evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt at commit
# cd543a149df89434d8a54582c0151c0b945c3d20 (Apache-2.0). A ChatML text, system turn included. The braces
# around the placeholders are literal, so fill {instruction}, {output_1} (model "m", the reference) and
# {output_2} ("M") with str.replace, as alpaca_eval's utils.make_prompts does, not with str.format.
ALPACA_EVAL_CLF = '''<|im_start|>system
You are a highly efficient assistant, who evaluates and selects the best large language model (LLMs) based on the quality of their responses to a given instruction. This process will be used to create a leaderboard reflecting the most accurate and human-preferred answers.
<|im_end|>
<|im_start|>user
I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding outputs. Your task is to assess these responses, and select the model that produces the best output from a human perspective.

## Instruction

{
    "instruction": """{instruction}""",
}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.

{
    {
        "model_identifier": "m",
        "output": """{output_1}"""
    },
    {
        "model_identifier": "M",
        "output": """{output_2}"""
    }
}

## Task

Evaluate the models based on the quality and relevance of their outputs, and select the model that generated the best output. Answer by providing the model identifier of the best model. We will use your output as the name of the best model, so make sure your output only contains one of the following model identifiers and nothing else (no quotes, no spaces, no new lines, ...): m or M.

## Best Model Identifier
<|im_end|>'''  # noqa: E501

# Arena-Hard v0.1 judge (gpt-4-1106-preview, temperature 0, max_tokens 4096, baseline gpt-4-0314). System
# prompt and the one prompt template verbatim from lmarena/arena-hard-auto, config/judge_config.yaml at
# commit 3071ef95d913bb5cd632641db336a3b6c7fe4bdd (the last commit with that file; Apache-2.0). In game 1
# {answer_1} is the baseline's answer and {answer_2} the model's; game 2 swaps them (gen_judgment.py).
ARENA_HARD_SYSTEM = """Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the user prompt displayed below. You will be given assistant A's answer and assistant B's answer. Your job is to evaluate which assistant's answer is better.

Begin your evaluation by generating your own answer to the prompt. You must provide your answers before judging any answers.

When evaluating the assistants' answers, compare both assistants' answers with your answer. You must identify and correct any mistakes or inaccurate information.

Then consider if the assistant's answers are helpful, relevant, and concise. Helpful means the answer correctly responds to the prompt or follows the instructions. Note when user prompt has any ambiguity or more than one interpretation, it is more helpful and appropriate to ask for clarifications or more information from the user than providing an answer based on assumptions. Relevant means all parts of the response closely connect or are appropriate to what is being asked. Concise means the response is clear and not verbose or excessive.

Then consider the creativity and novelty of the assistant's answers when needed. Finally, identify any missing important information in the assistants' answers that would be beneficial to include when responding to the user prompt.

After providing your explanation, you must output only one of the following choices as your final verdict with a label:

1. Assistant A is significantly better: [[A>>B]]
2. Assistant A is slightly better: [[A>B]]
3. Tie, relatively the same: [[A=B]]
4. Assistant B is slightly better: [[B>A]]
5. Assistant B is significantly better: [[B>>A]]

Example output: "My final verdict is tie: [[A=B]]"."""  # noqa: E501

ARENA_HARD_TEMPLATE = """<|User Prompt|>
{question_1}

<|The Start of Assistant A's Answer|>
{answer_1}
<|The End of Assistant A's Answer|>

<|The Start of Assistant B's Answer|>
{answer_2}
<|The End of Assistant B's Answer|>"""

# Arena-Hard v0.1: the user turn sent when a judgment has no verdict label (number_of_judgment_attempts: 2);
# the verdict is then parsed from both replies together. Verbatim from lmarena/arena-hard-auto,
# gen_judgment.py at commit 3071ef95d913bb5cd632641db336a3b6c7fe4bdd (Apache-2.0).
ARENA_HARD_CONTINUE = "continue your judgment and finish by outputting a final verdict label"

# MT-Bench single-answer grading (judge gpt-4, temperature 0, max_tokens 2048), one dict per FastChat prompt
# name: "system" is the system message, "template" the user message. Verbatim (system_prompt and
# prompt_template) from lm-sys/FastChat, fastchat/llm_judge/data/judge_prompts.jsonl at commit
# 0e6d3e4beaab66f4d3f93db72541a4abab8af28d (Apache-2.0). The *_MATH_* prompts are for the categories in
# benchmarks.NEED_REFERENCE and take the reference answer ({ref_answer_1}, {ref_answer_2}); the
# *_MULTI_TURN prompts grade turn 2 with the whole conversation. Fill with str.format.
MT_BENCH_SINGLE_V1 = {
    "system": """You are a helpful assistant.""",
    "template": """[Instruction]
Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin your evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".

[Question]
{question}

[The Start of Assistant's Answer]
{answer}
[The End of Assistant's Answer]""",  # noqa: E501
}

MT_BENCH_SINGLE_MATH_V1 = {
    "system": """You are a helpful assistant.""",
    "template": """[Instruction]
Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. Your evaluation should consider correctness and helpfulness. You will be given a reference answer and the assistant's answer. Begin your evaluation by comparing the assistant's answer with the reference answer. Identify and correct any mistakes. Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".

[Question]
{question}

[The Start of Reference Answer]
{ref_answer_1}
[The End of Reference Answer]

[The Start of Assistant's Answer]
{answer}
[The End of Assistant's Answer]""",  # noqa: E501
}

MT_BENCH_SINGLE_V1_MULTI_TURN = {
    "system": """Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question displayed below. Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. You evaluation should focus on the assistant's answer to the second user question. Begin your evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".

""",  # noqa: E501
    "template": """<|The Start of Assistant A's Conversation with User|>

### User:
{question_1}

### Assistant A:
{answer_1}

### User:
{question_2}

### Assistant A:
{answer_2}

<|The End of Assistant A's Conversation with User|>""",
}

MT_BENCH_SINGLE_MATH_V1_MULTI_TURN = {
    "system": """Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user question. Your evaluation should consider correctness and helpfulness. You will be given a reference answer and the assistant's answer. You evaluation should focus on the assistant's answer to the second question. Begin your evaluation by comparing the assistant's answer with the reference answer. Identify and correct any mistakes. Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: "Rating: [[5]]".

""",  # noqa: E501
    "template": """<|The Start of Reference Answer|>

### User:
{question_1}

### Reference answer:
{ref_answer_1}

### User:
{question_2}

### Reference answer:
{ref_answer_2}

<|The End of Reference Answer|>


<|The Start of Assistant A's Conversation with User|>

### User:
{question_1}

### Assistant A:
{answer_1}

### User:
{question_2}

### Assistant A:
{answer_2}

<|The End of Assistant A's Conversation with User|>""",
}

# The MoA judge on a benchmark (evaluate job, judge with an aggregator): the aggregator gets the benchmark's
# own judge prompt with the judges' outputs appended after this header, and answers in the benchmark's own
# output format (constrained like the judges'). Ours, in the spirit of MoA's aggregate-and-synthesize prompt
# above; MoAA does not publish an aggregator-judge prompt for benchmarks.
AGGREGATE_BENCHMARK_JUDGMENTS = """[Other Judges' Evaluations]
{evaluations}

The evaluations above were written by other judges for this same task. Some of them may be biased or wrong: check them against the question and the answers, then give your own final judgment, strictly in the output format the task asks for."""  # noqa: E501
