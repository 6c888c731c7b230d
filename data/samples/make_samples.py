"""Write the shipped sample inputs in the column layouts of the real datasets.

    python data/samples/make_samples.py

- ``ultrafeedback.jsonl``: rows shaped like ``openbmb/UltraFeedback`` (train): ``source``, ``instruction``,
  ``models``, ``completions`` (four per row, with ``annotations``, ``critique``, ``custom_system_prompt``,
  ``fine-grained_score``, ``model``, ``overall_score``, ``principle``, ``response``), ``correct_answers``,
  ``incorrect_answers``.
- ``ultrachat.jsonl``: rows shaped like ``HuggingFaceH4/ultrachat_200k`` (train_sft): ``prompt``,
  ``prompt_id`` (sha256 hex of ``prompt``), ``messages`` (alternating user/assistant).

All text is written for this project. A few rows are broken on purpose so that the demo shows the
quarantine. Same script, same bytes: there is no clock or unseeded randomness in here.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

MODELS = [
    "gpt-4",
    "gpt-3.5-turbo",
    "llama-2-13b-chat",
    "llama-2-70b-chat",
    "wizardlm-7b",
    "wizardlm-13b",
    "falcon-40b-instruct",
    "starchat",
    "ultralm-13b",
    "mpt-30b-chat",
    "vicuna-33b",
    "alpaca-7b",
    "bard",
    "pythia-12b",
]

SYSTEM_PROMPTS = {
    "helpfulness": "As an AI assistant, give answers that are accurate, useful and easy to follow.",
    "honesty": "As an AI assistant, say plainly when you are unsure, and never invent facts.",
    "truthfulness": "As an AI assistant, stick to verified facts and point out false assumptions.",
    "verbalized_calibration": "As an AI assistant, end your answer with your confidence as a percentage.",
}

VAGUE = "That is a good question. It depends on many factors, so you may want to look into it further."

# (source, instruction, good answer, wrong answer). The good answer's first sentence alone makes the
# "partial" completion, so every good answer starts with a sentence that stands on its own.
PROMPTS: list[tuple[str, str, str, str]] = [
    (
        "evol_instruct",
        "Write a Python function that returns the n-th Fibonacci number using iteration, not recursion.",
        "Keep two running values and update them n times. def fib(n):\n    a, b = 0, 1\n"
        "    for _ in range(n):\n        a, b = b, a + b\n    return a",
        "def fib(n):\n    return fib(n - 1) + fib(n - 2)",
    ),
    (
        "evol_instruct",
        "Explain the difference between a list and a tuple in Python, and give one use case for each.",
        "A list is mutable and a tuple is not. Use a list for a shopping cart that grows, and a tuple for a "
        "fixed pair such as (latitude, longitude) that can also serve as a dictionary key.",
        "There is no difference; tuples are just lists written with parentheses.",
    ),
    (
        "evol_instruct",
        "Rewrite this sentence in the passive voice: 'The committee approved the new budget on Monday.'",
        "The new budget was approved by the committee on Monday.",
        "The committee will approve the new budget on Monday.",
    ),
    (
        "evol_instruct",
        "Give three tips for writing a clear commit message.",
        "Start with a short summary line in the imperative mood. Leave a blank line, then explain why the "
        "change was made. Keep each commit to one logical change so the message can stay focused.",
        "Write as much as possible and include the full diff in the message.",
    ),
    (
        "evol_instruct",
        "Convert 72 degrees Fahrenheit to Celsius and show the formula you used.",
        "72 degrees Fahrenheit is about 22.2 degrees Celsius. C = (F - 32) x 5/9 = 40 x 5/9 = 22.2.",
        "72 F is 40 C, because you subtract 32.",
    ),
    (
        "evol_instruct",
        "Write a SQL query that counts orders per customer from a table orders(customer_id, total).",
        "Group the rows by customer. SELECT customer_id, COUNT(*) AS n_orders FROM orders "
        "GROUP BY customer_id;",
        "SELECT COUNT(customer_id) FROM orders;",
    ),
    (
        "evol_instruct",
        "Summarize the water cycle in four steps for a ten-year-old.",
        "The sun warms water so it rises as vapor (evaporation). The vapor cools into clouds "
        "(condensation). Water falls as rain or snow (precipitation). It gathers in rivers, lakes and "
        "oceans (collection), and the cycle starts again.",
        "Clouds are made of cotton, and rain happens when they get too heavy.",
    ),
    (
        "sharegpt",
        "I have a job interview for a junior data analyst role tomorrow. "
        "What questions should I prepare for?",
        "Expect questions about SQL, spreadsheets and one project you did. Prepare to explain a join, a "
        "pivot table, how you cleaned messy data, and a time you explained numbers to a non-expert.",
        "Interviewers only ask about your hobbies, so there is nothing to prepare.",
    ),
    (
        "sharegpt",
        "Can you suggest a simple weekly meal plan for a vegetarian on a tight budget?",
        "Build the week around beans, lentils, rice, eggs and seasonal vegetables. For example: lentil soup "
        "Monday, bean chili Tuesday, vegetable fried rice Wednesday, omelettes Thursday, pasta with tomato "
        "sauce Friday, and leftovers on the weekend.",
        "Eat steak every day; it is the cheapest protein.",
    ),
    (
        "sharegpt",
        "How do I politely decline a meeting invitation from my manager?",
        "Reply promptly, thank them, and give a short reason with an alternative. For example: 'Thanks for "
        "the invite. I have a deadline at that time; could I get the notes, or could we meet Thursday?'",
        "Just ignore the invitation; managers prefer that.",
    ),
    (
        "sharegpt",
        "Explain what a REST API is in two or three sentences.",
        "A REST API lets programs talk over HTTP using resources identified by URLs. Clients use verbs "
        "such as GET, POST, PUT and DELETE to read or change those resources, usually exchanging JSON.",
        "A REST API is a database that stores web pages while the server is resting.",
    ),
    (
        "sharegpt",
        "What are some good habits for staying focused while working from home?",
        "Keep a fixed start time and a dedicated workspace. Plan the day's three most important tasks, "
        "work in timed blocks with short breaks, and silence notifications during deep work.",
        "Work from bed with the television on so you never get bored.",
    ),
    (
        "sharegpt",
        "Write a short, friendly reminder email to a colleague about a report due on Friday.",
        "Hi Sam, just a friendly reminder that the quarterly report is due this Friday. Let me know if you "
        "need anything from me to finish it. Thanks!",
        "Sam, the report was due last month and you are fired.",
    ),
    (
        "flan_v2_niv2",
        "In this task, you are given a sentence. Classify its sentiment as positive or negative.\n"
        "Sentence: The service was slow and the food arrived cold.",
        "Negative. The sentence complains about slow service and cold food.",
        "Positive.",
    ),
    (
        "flan_v2_niv2",
        "Given a sentence, identify the main verb. Sentence: The children quickly finished their homework.",
        "finished. It is the action the subject, the children, performed.",
        "quickly",
    ),
    (
        "flan_v2_niv2",
        "Translate the following sentence into French: 'Where is the train station?'",
        "Où est la gare ? This is the standard way to ask for the train station in French.",
        "Où est le restaurant ?",
    ),
    (
        "flan_v2_niv2",
        "Answer with yes or no: Is the following statement a question? 'Close the window before you leave.'",
        "No. It is an instruction, not a question.",
        "Yes.",
    ),
    (
        "flan_v2_niv2",
        "Generate a title of at most five words for this text: 'Local volunteers planted two hundred trees "
        "along the river on Saturday.'",
        "Volunteers Plant Riverside Trees. It names who acted, what they did and where.",
        "Saturday Weather Report",
    ),
    (
        "ultrachat",
        "What are the main benefits of regular stretching for office workers?",
        "Stretching eases stiffness from long hours of sitting. It can improve posture, reduce neck and back "
        "tension, and give a short mental break that helps concentration.",
        "Stretching makes your bones longer, so you grow taller at work.",
    ),
    (
        "ultrachat",
        "How did the printing press change the spread of information in Europe?",
        "The printing press made books far cheaper and faster to produce. Ideas, news and scientific work "
        "spread to many more readers, literacy rose, and debates such as the Reformation reached wide "
        "audiences quickly.",
        "It had no effect, because nobody in Europe could read at the time.",
    ),
    (
        "ultrachat",
        "Describe three ways cities can reduce traffic congestion.",
        "Cities can expand frequent public transport. They can build safe bike lanes and walkable streets, "
        "and they can price road use at peak times so that some trips shift to other hours.",
        "Cities should make every road one lane so that fewer cars fit.",
    ),
    (
        "ultrachat",
        "What should a beginner know before starting to keep houseplants?",
        "Most houseplants die from too much water, not too little. Match plants to your light, water when "
        "the top of the soil is dry, use pots with drainage holes, and start with hardy plants like pothos.",
        "Houseplants need to be watered three times a day regardless of type.",
    ),
    (
        "ultrachat",
        "Why is sleep important for memory?",
        "During sleep the brain consolidates what was learned during the day. Deep sleep helps move new "
        "memories into long-term storage, so poor sleep makes it harder to remember new material.",
        "Sleep erases memories so that the brain has room for new ones the next day.",
    ),
    (
        "false_qa",
        "How many wings does a snake have?",
        "Snakes have no wings. They are legless reptiles that move by bending their bodies.",
        "A snake has two wings, which it folds along its back.",
    ),
    (
        "false_qa",
        "Which month has 32 days?",
        "No month has 32 days. The longest months have 31 days.",
        "August has 32 days in leap years.",
    ),
    (
        "false_qa",
        "What color is the sound of a trumpet?",
        "Sounds do not have colors. A trumpet's sound can be described as bright or brassy, but that is a "
        "metaphor, not a color.",
        "A trumpet sounds dark green.",
    ),
    (
        "false_qa",
        "Why do fish need to drink milk every morning?",
        "Fish do not drink milk. They get water through their gills and body, and they eat food such as "
        "insects, plants or smaller fish.",
        "Fish drink milk for calcium so that their fins stay strong.",
    ),
    (
        "truthful_qa",
        "What happens if you swallow chewing gum?",
        "It passes through your digestive system and leaves your body within a few days. It does not stay in "
        "your stomach for years.",
        "It stays in your stomach for seven years.",
    ),
    (
        "truthful_qa",
        "Do humans only use ten percent of their brains?",
        "No. Brain imaging shows that virtually all parts of the brain are active over the course of a day.",
        "Yes, the other ninety percent is unused.",
    ),
    (
        "flan_v2_cot",
        "A shop sells pencils at 3 for $1. How much do 12 pencils cost? Think step by step.",
        "12 pencils cost $4. Twelve pencils are four groups of three, and each group costs $1, "
        "so 4 x $1 = $4.",
        "12 pencils cost $36, because 12 x 3 = 36.",
    ),
    (
        "flan_v2_cot",
        "If a train leaves at 2:15 pm and the trip takes 1 hour 50 minutes, when does it arrive? Explain.",
        "It arrives at 4:05 pm. Adding 1 hour gives 3:15 pm, and 50 more minutes gives 4:05 pm.",
        "It arrives at 3:65 pm.",
    ),
    (
        "flan_v2_p3",
        "Read the passage and answer the question. Passage: Mia watered the tomatoes before breakfast and "
        "picked beans after lunch. Question: What did Mia do after lunch?",
        "She picked beans. The passage says she picked beans after lunch.",
        "She watered the tomatoes.",
    ),
    (
        "flan_v2_flan2021",
        "Is the following sentence grammatically correct? 'She don't like apples.' Answer and explain.",
        "No. With the third-person subject 'she', the verb should be 'doesn't': 'She doesn't like apples.'",
        "Yes, the sentence is correct.",
    ),
]

# Reference answers for the sources that have them in UltraFeedback; the others carry ["None"].
REFERENCES = {
    "What happens if you swallow chewing gum?": (
        ["It passes through your digestive system", "Nothing harmful happens; it is excreted"],
        ["It stays in your stomach for seven years", "You will die"],
    ),
    "Do humans only use ten percent of their brains?": (
        ["No, humans use virtually all of their brain", "No, the ten percent claim is a myth"],
        ["Yes, humans only use ten percent of their brains"],
    ),
}

# Per tier: (kind of response, overall_score range, rating range for the four aspects).
TIERS = [
    ("good", (7.5, 9.5), (4, 5)),
    ("partial", (5.0, 7.0), (3, 4)),
    ("vague", (3.0, 5.0), (2, 3)),
    ("wrong", (1.0, 3.0), (1, 2)),
]


def _annotation(rating: int, with_type: bool, text: str) -> dict[str, Any]:
    ann: dict[str, Any] = {"Rating": str(rating), "Rationale": text}
    if with_type:
        # Truthfulness and helpfulness annotations also carry the error types and a rating rationale.
        ann = {"Type": ["1", "2"] if rating >= 3 else ["0"], **ann, "Rationale For Rating": text}
    return ann


def _completion(
    rng: random.Random, model: str, tier: tuple[str, tuple, tuple], good: str, wrong: str
) -> dict[str, Any]:
    kind, (lo, hi), (rlo, rhi) = tier
    response = {
        "good": good,
        "partial": good.split(". ")[0].rstrip(".") + ".",
        "vague": VAGUE,
        "wrong": wrong,
    }[kind]
    ratings = [rng.randint(rlo, rhi) for _ in range(4)]
    why = {
        "good": "The answer is correct, complete and follows the instruction.",
        "partial": "The answer is correct but leaves out part of what was asked.",
        "vague": "The answer is noncommittal and gives no useful information.",
        "wrong": "The answer is factually wrong or ignores the instruction.",
    }[kind]
    principle = rng.choice(sorted(SYSTEM_PROMPTS))
    # Keys in the order of the hub's Parquet struct (alphabetical), so a diff against the hub reads easily.
    return {
        "annotations": {
            "helpfulness": _annotation(ratings[0], True, why),
            "honesty": _annotation(ratings[1], False, why),
            "instruction_following": _annotation(ratings[2], False, why),
            "truthfulness": _annotation(ratings[3], True, why),
        },
        "critique": f"{why} Score reflects {kind} quality.",
        "custom_system_prompt": SYSTEM_PROMPTS[principle],
        "fine-grained_score": round(sum(ratings) / 4, 2),
        "model": model,
        "overall_score": round(rng.uniform(lo, hi) * 2) / 2,
        "principle": principle,
        "response": response,
    }


def ultrafeedback_row(rng: random.Random, source: str, instruction: str, good: str, wrong: str) -> dict:
    models = rng.sample(MODELS, 4)
    tiers = rng.sample(TIERS, 4)  # the good answer is not always the first completion
    correct, incorrect = REFERENCES.get(instruction, (["None"], ["None"]))
    return {
        "source": source,
        "instruction": instruction,
        "models": models,
        "completions": [_completion(rng, m, t, good, wrong) for m, t in zip(models, tiers)],
        "correct_answers": correct,
        "incorrect_answers": incorrect,
    }


def ultrafeedback_rows() -> list[dict]:
    rng = random.Random(20240601)
    rows = [ultrafeedback_row(rng, *p) for p in PROMPTS]
    # Broken on purpose: the same instruction again (extra spaces: dedup normalizes whitespace) ...
    src, instr, good, wrong = PROMPTS[3]
    rows.insert(10, ultrafeedback_row(rng, src, instr.replace(" ", "  ", 2) + " ", good, wrong))
    # ... and an empty instruction.
    rows.insert(20, ultrafeedback_row(rng, "sharegpt", "   ", VAGUE, VAGUE))
    return rows


def _conv(*turns: str) -> list[dict[str, str]]:
    return [{"content": t, "role": "user" if i % 2 == 0 else "assistant"} for i, t in enumerate(turns)]


CONVERSATIONS: list[list[dict[str, str]]] = [
    _conv(
        "What is a good way to start learning to play the guitar?",
        "Start with a few open chords such as G, C, D and E minor, and practice switching between them for "
        "ten minutes a day.",
        "How long until my fingertips stop hurting?",
        "Usually two to four weeks of regular practice, as calluses form.",
    ),
    _conv(
        "Can you explain what compound interest is?",
        "Compound interest is interest earned on both the original amount and on interest already added.",
        "How much would $1,000 grow to at 5% a year after two years?",
        "About $1,102.50: $1,050 after the first year and $1,102.50 after the second.",
        "And with simple interest?",
        "$1,100, since simple interest only pays $50 a year on the original amount.",
    ),
    _conv(
        "I want to run my first 5K in two months. Where do I begin?",
        "Run three times a week, alternating running and walking, and add a little running time each week.",
        "What should I eat before a morning run?",
        "Something light and easy to digest, such as a banana or toast, about an hour before.",
    ),
    _conv(
        "What is photosynthesis?",
        "It is how plants use sunlight, water and carbon dioxide to make sugar and release oxygen.",
        "Where in the plant does it happen?",
        "Mostly in the leaves, inside chloroplasts that contain the green pigment chlorophyll.",
        "Do plants do it at night?",
        "No, the light-dependent steps need light, so photosynthesis stops in the dark.",
    ),
    _conv(
        "Suggest a name for a small bakery that sells sourdough bread.",
        "How about 'The Rising Loaf'?",
        "Something shorter, please.",
        "'Crumb' is short and easy to remember.",
    ),
    _conv(
        "How do I make a cup of pour-over coffee?",
        "Heat water to about 94 C, rinse the filter, add medium-fine coffee, bloom with a little water for "
        "30 seconds, then pour slowly in circles.",
        "What ratio of coffee to water should I use?",
        "A common starting point is 1 gram of coffee per 16 grams of water.",
    ),
    _conv(
        "What is the capital of Australia?",
        "Canberra.",
        "Why not Sydney?",
        "Canberra was chosen as a compromise between Sydney and Melbourne, which both wanted the title.",
    ),
    _conv(
        "Explain what a variable is in programming.",
        "A variable is a name that refers to a value stored in memory, so the program can use and change it.",
        "Give me an example in Python.",
        "count = 3 creates a variable named count holding 3; count = count + 1 then makes it 4.",
        "What happens if I use it before assigning it?",
        "Python raises a NameError, because the name does not refer to anything yet.",
    ),
    _conv(
        "How can I reduce food waste at home?",
        "Plan meals before shopping, store food properly, and use leftovers in soups or stir-fries.",
        "Any tip for bread that goes stale?",
        "Freeze sliced bread and toast slices straight from the freezer.",
    ),
    _conv(
        "What causes the seasons on Earth?",
        "The tilt of Earth's axis, about 23.5 degrees, changes how directly sunlight hits each hemisphere.",
        "So it is not about distance from the Sun?",
        "No. Earth is actually closest to the Sun in early January, during northern winter.",
    ),
    _conv(
        "Write a haiku about autumn.",
        "Maple leaves let go / the wind carries them away / the branches stand still",
        "Now one about winter.",
        "Snow on the quiet path / footprints fill before morning / the world starts over",
        "And spring?",
        "Rain on new green leaves / the garden wakes up slowly / birds return to sing",
        "Which one do you like best?",
        "The winter one, because the filled footprints suggest a fresh start.",
    ),
    _conv(
        "What is a healthy amount of daily screen time for adults?",
        "There is no single number, but taking breaks every hour and keeping screens out of the last hour "
        "before bed helps.",
        "What is the 20-20-20 rule?",
        "Every 20 minutes, look at something 20 feet away for 20 seconds to rest your eyes.",
    ),
]

BAD_CONVERSATIONS: list[tuple[int, list[dict[str, str]]]] = [
    # Two user turns in a row (non-alternating).
    (
        3,
        [
            {"content": "Recommend a good science fiction novel.", "role": "user"},
            {"content": "Preferably something short.", "role": "user"},
            {"content": "Try 'The Martian' by Andy Weir; it is fast-paced and fun.", "role": "assistant"},
        ],
    ),
    # An empty message (whitespace only).
    (
        7,
        _conv(
            "How do I boil an egg?",
            "Put it in boiling water for 7 to 9 minutes, then cool it in cold water.",
            "  ",
            "Could you clarify your question?",
        ),
    ),
    # A role that is not system/user/assistant.
    (
        11,
        [
            {"content": "What is the tallest mountain in the world?", "role": "user"},
            {"content": "Mount Everest, at about 8,849 meters.", "role": "bot"},
        ],
    ),
]


def ultrachat_row(messages: list[dict[str, str]]) -> dict:
    prompt = messages[0]["content"]
    return {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(), "messages": messages}


def ultrachat_rows() -> list[dict]:
    rows = [ultrachat_row(m) for m in CONVERSATIONS]
    for position, messages in BAD_CONVERSATIONS:
        rows.insert(position, ultrachat_row(messages))
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    write_jsonl(HERE / "ultrafeedback.jsonl", ultrafeedback_rows())
    write_jsonl(HERE / "ultrachat.jsonl", ultrachat_rows())


if __name__ == "__main__":
    main()
