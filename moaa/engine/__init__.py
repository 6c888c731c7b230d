"""Models and engines: the model settings (``settings``: no vLLM, no Ray), the vLLM wrapper and its Ray
actor pools (``vllm``), the shard-by-shard Ray Data engine (``shards``)."""
