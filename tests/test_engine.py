"""The engine's pure row functions, without vLLM: how a conversation is rendered under a chat template that
rejects a system role, and which engine errors end the engine's actor (tests/test_generate_sft.py and
tests/test_generate_dpo.py run both on the real engine)."""

from types import SimpleNamespace

import pytest
from conftest import NO_SYSTEM_TEMPLATE

from moaa.embedded.tiny import build_tokenizer
from moaa.engine.settings import ModelConfig
from moaa.engine.vllm import fold_system, is_fatal, render_ids


def test_a_template_without_a_system_role_gets_the_system_text_in_the_first_user_turn(capsys):
    conv = [
        {"role": "system", "content": "Judge fairly."},
        {"role": "user", "content": "Which is better?"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "Why?"},
    ]
    assert fold_system(conv)[0] == {"role": "user", "content": "Judge fairly.\n\nWhich is better?"}
    assert fold_system(conv)[1:] == conv[2:] and conv[0]["role"] == "system"  # the input is not changed
    no_system = conv[1:]
    assert fold_system(no_system) is no_system  # nothing to fold: the same list
    assert fold_system(conv[:1]) == [{"role": "user", "content": "Judge fairly."}]

    tok = build_tokenizer()
    tok.chat_template = NO_SYSTEM_TEMPLATE
    engine = SimpleNamespace(tokenizer=tok, fold_system=False, cfg=ModelConfig(model="m", name="gemma-like"))
    ids = render_ids(engine, conv)
    assert tok.decode(ids).startswith("<|im_start|>user\nJudge fairly.\n\nWhich is better?<|im_end|>")
    assert engine.fold_system and capsys.readouterr().out.count("rejects a system message") == 1
    assert render_ids(engine, conv) == ids and "rejects" not in capsys.readouterr().out  # said once
    # a template that fails for another reason still fails (the engine makes it the row's error)
    tok.chat_template = "{{ raise_exception('broken template') }}"
    fresh = SimpleNamespace(tokenizer=tok, fold_system=False, cfg=engine.cfg)
    with pytest.raises(Exception, match="broken template"):
        render_ids(fresh, conv)
    with pytest.raises(Exception, match="broken template"):
        render_ids(fresh, conv[1:])


def test_only_errors_that_leave_the_engine_unable_to_answer_are_fatal():
    from vllm.v1.engine.exceptions import EngineDeadError

    assert is_fatal(EngineDeadError())
    assert is_fatal(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_fatal(RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error"))
    # a request's own errors stay the request's: its row keeps the reason, the engine goes on
    assert not is_fatal(ValueError("prompt too long"))
    assert not is_fatal(RuntimeError("structured output grammar failed to compile"))
    assert not is_fatal(KeyError("CUDA error"))


@pytest.mark.parametrize(
    "settings,error",
    [
        (dict(tensor_parallel_size=4, num_gpus=4), None),
        (dict(num_gpus=0.5), None),  # two one-GPU engines share a GPU
        (
            dict(tensor_parallel_size=2, num_gpus=2, engine_kwargs={"pipeline_parallel_size": 2}),
            "set num_gpus = 4",
        ),
        (dict(tensor_parallel_size=2, num_gpus=4, engine_kwargs={"pipeline_parallel_size": 2}), None),
        (dict(tensor_parallel_size=4, num_gpus=2), "set num_gpus = 4"),
        (dict(tensor_parallel_size=2, num_gpus=8), "set num_gpus = 2"),
        (dict(num_gpus=2), "set num_gpus = 1"),
        (dict(tensor_parallel_size=2), "needs GPUs: set num_gpus = 2"),
    ],
)
def test_an_engine_size_that_vllm_would_refuse_late_is_refused_in_the_config(settings, error):
    import time

    from moaa.core.config import ConfigError, load_config
    from moaa.stages.generate_sft import GenerateSFTConfig

    overrides = [f"aggregator.{k}={v}" for k, v in settings.items() if k != "engine_kwargs"]
    overrides += [f"aggregator.engine_kwargs.{k}={v}" for k, v in settings.get("engine_kwargs", {}).items()]
    t0 = time.time()
    if error is None:
        assert load_config(GenerateSFTConfig, None, overrides).aggregator.num_gpus == settings["num_gpus"]
        return
    with pytest.raises(ConfigError, match=error) as e:
        load_config(GenerateSFTConfig, None, overrides)
    assert "aggregator" in str(e.value) and time.time() - t0 < 1


def test_an_engine_that_cannot_start_says_what_it_needs_and_what_the_cluster_has():
    from moaa.engine.vllm import _fit_note

    cfg = ModelConfig(model="m", tensor_parallel_size=8, num_gpus=8)
    nodes = [
        {"Alive": True, "Resources": {"CPU": 16, "GPU": 4}},
        {"Alive": False, "Resources": {"CPU": 64, "GPU": 8}},  # gone: does not count
        {"Alive": True, "Resources": {"CPU": 8}},
    ]
    note = _fit_note(cfg, nodes)
    assert (
        "needs 1 CPU and 8 GPU on one node; no live node has that many GPU (the largest: 16 CPU, 4 GPU)"
        in note
    )
    assert "still be loading" in _fit_note(ModelConfig(model="m", num_gpus=4, tensor_parallel_size=4), nodes)
