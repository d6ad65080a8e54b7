"""The internlm2-chat template and image-block splicing (reference sections 1.5 and 4)."""

from __future__ import annotations

import pytest

from monovl.processing import (
    ChatTemplate,
    INTERNLM2_SYSTEM_MESSAGE,
    SeparatorStyle,
    assistant_spans,
    available_templates,
    build_prompt,
    chat_messages,
    get_template,
    image_block,
    register_template,
    splice_images,
)

SYS = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
CTX = "<IMG_CONTEXT>"


def test_default_system_message_is_the_published_string():
    assert INTERNLM2_SYSTEM_MESSAGE == SYS
    template = get_template("internlm2-chat")
    assert template.system_message == SYS
    assert template.system_template == "<|im_start|>system\n{system_message}"
    assert template.roles == ("<|im_start|>user\n", "<|im_start|>assistant\n")
    assert template.sep == "<|im_end|>" and template.sep_style is SeparatorStyle.MPT
    assert template.stop_strings == ("<|im_end|>",)


def test_text_only_prompt():
    prompt = build_prompt("internlm2-chat", "Hello, who are you?")
    assert prompt == (
        "<|im_start|>system\n" + SYS + "<|im_end|>"
        "<|im_start|>user\nHello, who are you?<|im_end|>"
        "<|im_start|>assistant\n"
    )


def test_custom_and_empty_system_message():
    assert build_prompt("internlm2-chat", "Q", system_message="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|><|im_start|>user\nQ<|im_end|><|im_start|>assistant\n"
    )
    assert build_prompt("internlm2-chat", "Q", system_message="") == (
        "<|im_start|>system\n<|im_end|><|im_start|>user\nQ<|im_end|><|im_start|>assistant\n"
    )


def test_single_image_prompt():
    prompt = build_prompt("internlm2-chat", "What is this?", tiles_per_image=[2], num_image_token=3)
    assert prompt == (
        "<|im_start|>system\n" + SYS + "<|im_end|>"
        "<|im_start|>user\n<img>" + CTX * 6 + "</img>\nWhat is this?<|im_end|>"
        "<|im_start|>assistant\n"
    )


def test_reference_multi_turn_example(tiny_tokenizer):
    # Reference section 4: the image block only in the first turn, no newline between turns.
    prompt = build_prompt(
        "internlm2-chat",
        "q2",
        history=[("q1", "a1")],
        tiles_per_image=[1],
        num_image_token=256,
    )
    block = "<img>" + CTX * 256 + "</img>"
    expected = (
        "<s><|im_start|>system\n" + SYS + "<|im_end|><|im_start|>user\n" + block + "\nq1<|im_end|>"
        "<|im_start|>assistant\na1<|im_end|><|im_start|>user\nq2<|im_end|><|im_start|>assistant\n"
    )
    assert "<s>" + prompt == expected
    ids = tiny_tokenizer.encode(prompt)
    assert ids[0] == tiny_tokenizer.bos_token_id  # the <s> comes from the tokenizer
    assert tiny_tokenizer.decode(ids) == expected
    assert ids.count(tiny_tokenizer.token_to_id(CTX)) == 256


def test_multi_image_numbering():
    prompt = build_prompt("internlm2-chat", "Compare them.", tiles_per_image=[1, 2], num_image_token=2)
    assert prompt == (
        "<|im_start|>system\n" + SYS + "<|im_end|><|im_start|>user\n"
        "<image 1> (图1):<img>" + CTX * 2 + "</img>"
        "<image 2> (图2):<img>" + CTX * 4 + "</img>\nCompare them.<|im_end|>"
        "<|im_start|>assistant\n"
    )


def test_placeholders_are_replaced_in_order_across_turns():
    users = splice_images(["Image-1: <image>\nWhat?", "And Image-2: <image>?"], [1, 3], num_image_token=1)
    assert users == [
        "Image-1: <img>" + CTX + "</img>\nWhat?",
        "And Image-2: <img>" + CTX * 3 + "</img>?",
    ]
    # Training style: "<image>\n" already present gives the same text as the automatic prefix.
    assert splice_images(["<image>\nDescribe."], [2], 1) == splice_images(["Describe."], [2], 1)


def test_image_block_only_in_first_turn_with_history():
    prompt = build_prompt(
        "internlm2-chat", "third", history=[("first", "A"), ("second", "B")], tiles_per_image=[1], num_image_token=1
    )
    assert prompt == (
        "<|im_start|>system\n" + SYS + "<|im_end|>"
        "<|im_start|>user\n<img>" + CTX + "</img>\nfirst<|im_end|><|im_start|>assistant\nA<|im_end|>"
        "<|im_start|>user\nsecond<|im_end|><|im_start|>assistant\nB<|im_end|>"
        "<|im_start|>user\nthird<|im_end|><|im_start|>assistant\n"
    )


def test_placeholder_errors():
    with pytest.raises(ValueError, match="no images"):
        splice_images(["look: <image>"], [])
    with pytest.raises(ValueError, match="placeholder"):
        splice_images(["<image> and <image>"], [1])
    with pytest.raises(ValueError):
        image_block(0)
    with pytest.raises(ValueError, match="history"):
        build_prompt("internlm2-chat", "q", history=[("only one",)])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        build_prompt("internlm2-chat", 3)  # type: ignore[arg-type]


def test_render_finished_conversation_for_training():
    template = get_template("internlm2-chat")
    text = template.render([("hi", "hello")], system_message="S")
    assert text == "<|im_start|>system\nS<|im_end|><|im_start|>user\nhi<|im_end|><|im_start|>assistant\nhello<|im_end|>"


def test_stop_tokens_and_response_extraction(tiny_tokenizer):
    template = get_template("internlm2-chat")
    # </s>, <|im_start|>, <|im_end|>: [2, 92543, 92542] on the released tokenizer.
    assert template.stop_token_ids(tiny_tokenizer) == [2, 8, 7]
    assert template.extract_response("  A red car. <|im_end|><|im_start|>user\n") == "A red car."


def test_registry():
    assert "internlm2-chat" in available_templates()
    with pytest.raises(ValueError, match="internlm2-chat"):
        get_template("no-such-template")
    template = get_template("internlm2-chat")
    assert get_template(template) is template
    with pytest.raises(ValueError, match="already registered"):
        register_template(template)
    custom = ChatTemplate(
        name="test-only-mpt",
        system_template="<sys>{system_message}",
        system_message="S",
        roles=("<u>", "<a>"),
        sep="</t>",
    )
    register_template(custom, override=True)
    assert build_prompt("test-only-mpt", "q") == "<sys>S</t><u>q</t><a>"


# ----------------------------------------------------------- ChatML templates
def test_chatml_golden_strings():
    assert "chatml" in available_templates() and "smollm2" in available_templates()
    assert build_prompt("chatml", "Hi") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert build_prompt("chatml", "q2", history=[("q1", "a1")], tiles_per_image=[1], num_image_token=2) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<img>" + CTX * 2 + "</img>\nq1<|im_end|>\n"
        "<|im_start|>assistant\na1<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    template = get_template("chatml")
    assert template.stop_strings == ("<|im_end|>", "<|endoftext|>")
    assert template.stop_tokens == ("<|im_end|>", "<|endoftext|>")
    assert template.extract_response(" Fine.<|endoftext|>") == "Fine."
    assert template.render([("q", "a")], system_message="S") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"
    )


def test_smollm2_golden_string():
    assert build_prompt("smollm2", "Hi") == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    smol, chatml = get_template("smollm2"), get_template("chatml")
    assert (smol.roles, smol.sep, smol.stop_tokens) == (chatml.roles, chatml.sep, chatml.stop_tokens)


@pytest.mark.parametrize("name", ["internlm2-chat", "chatml", "smollm2"])
def test_assistant_spans_are_the_answers_with_their_separator(name):
    template = get_template(name)
    history = [("<img>x</img>\nq1", "a1"), ("q2", "a2")]
    messages = chat_messages(history, system_message="S")
    assert template.render_messages(messages) == template.render(history, system_message="S")
    for question, gen in [("q3", True), ("q3", False), ("", True)]:
        assert template.render_messages(chat_messages(history, question, "S"), gen) == template.render(
            history, question, "S", gen)
    full, spans = assistant_spans(template, messages)
    assert full == template.render(history, system_message="S")
    assert [full[a:b] for a, b in spans] == ["a1" + template.sep, "a2" + template.sep]
    # Everything before the first answer is untrained, the assistant header included.
    assert full[: spans[0][0]] == ("<|im_start|>system\nS" + template.sep + template.roles[0] + "<img>x</img>\nq1"
                                   + template.sep + template.roles[1])
    # An empty answer leaves only the bare header (untrained).
    full, spans = assistant_spans(template, chat_messages([("q", "")], system_message="S"))
    assert full.endswith(template.roles[1]) and spans == [(len(full), len(full))]
    with pytest.raises(ValueError, match="alternating"):
        template.render_messages([{"role": "assistant", "content": "a"}])


@pytest.mark.parametrize("name", ["internlm2-chat", "chatml", "smollm2"])
def test_named_templates_as_jinja_render_the_same_text(name):
    """`ChatTemplate.to_jinja` (what vLLM gets for official checkpoints, which name their template in
    config.json) renders exactly what the template renders, quirks included."""
    from monovl.processing.chat_template import compile_chat_template
    from monovl.processing.prompt import get_template

    template = get_template(name)
    jinja = compile_chat_template(template.to_jinja())
    conversations = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": 'a "quoted"\nline'},
         {"role": "assistant", "content": "ok"}, {"role": "user", "content": "再见"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],  # no header after an answer
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "r"}],
    ]
    for messages in conversations:
        for header in (True, False):
            text = jinja.render(messages=messages, add_generation_prompt=header, bos_token="<s>")
            expected = template.render_messages(messages, add_generation_prompt=header)
            assert text == ("<s>" if template.add_bos else "") + expected
    with pytest.raises(Exception, match="system, user and assistant"):
        jinja.render(messages=[{"role": "tool", "content": "x"}], add_generation_prompt=True, bos_token="<s>")
