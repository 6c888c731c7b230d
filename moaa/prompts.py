"""Every prompt moaa sends, as named constants, each with where it comes from."""

# Mixture-of-Agents "aggregate-and-synthesize" system prompt, verbatim from the reference implementation:
# togethercomputer/MoA, utils.py, inject_references_to_messages (commit 14c0f356, Apache-2.0). MoAA (ICML
# 2025) uses MoA's aggregator as is. The numbered responses follow it, one per line, as "\n{i}. {text}".
AGGREGATE_AND_SYNTHESIZE = """You have been provided with a set of responses from various open-source models to the latest user query. Your task is to synthesize these responses into a single, high-quality response. It is crucial to critically evaluate the information provided in these responses, recognizing that some of it may be biased or incorrect. Your response should not simply replicate the given answers but should offer a refined, accurate, and comprehensive reply to the instruction. Ensure your response is well-structured, coherent, and adheres to the highest standards of accuracy and reliability.

Responses from models:"""  # noqa: E501
