"""Tiny random models with real tokenizers.

For tests, and for trying a pipeline end to end without any weights: a
byte-level BPE tokenizer trained on the spot (any text round-trips), a 2-layer
Llama-architecture causal LM (the shape of SmolLM2; Qwen2 without the biases),
and optionally a LLaVA-style vision-language model around it that takes one
image per request.  Nothing is downloaded, and the same seed writes
byte-identical files.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = (END_OF_TEXT, IM_START, IM_END)

# ChatML, as in Qwen and SmolLM2.  A message's content may also be a list of
# parts ({"type": "text", "text": ...} or {"type": "image"}), as processors send.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

VOCAB_SIZE = 1024
HIDDEN_SIZE = 64
CONTEXT_LENGTH = 4096
IMAGE_SIZE = 32
PATCH_SIZE = 8  # (32 / 8)^2 = 16 image tokens per image

_ENGLISH = """\
You are a helpful assistant. Answer the question and explain your reasoning step by step.
The student read the problem carefully, wrote down what was given, and checked each step.
First, find the total. Then subtract what was used. Finally, state the answer clearly.
A good answer names the premises, follows them in order, and reaches a conclusion.
If the result does not make sense, go back and look for the mistake in the previous step.
The teacher compared the two solutions and wrote a short lesson that others can reuse.
Always check the units. Count the items twice. Read the question again before answering.
The picture shows a triangle, a square and a circle. Which shape has the most sides?
There are three red balls and five blue balls in the box. How many balls are there?
The train leaves at nine in the morning and arrives two hours later, at eleven.
When a number is even, it can be divided by two without a remainder.
The area of a rectangle is its length times its width; the perimeter is twice their sum.
The answer is a whole number. Put the final answer in a box at the end of your response.
Experience: when the question asks for a difference, subtract the smaller from the larger.
Experience: draw the figure, label every side, and write the equation before solving it.
The sun rises in the east and sets in the west. In winter the days are short and cold.
People often work together to solve hard problems, and they learn from their mistakes.
Please write a short story about a small dog who finds a lost key in the garden.
The city has many streets, a large park, two schools, a library and an old market.
Water boils at one hundred degrees and freezes at zero degrees on the Celsius scale.
She opened the window, looked at the sky, and said that it would probably rain today.
This function returns the sum of a list of numbers; it should handle an empty list too.
The model generates text one token at a time, and each new token depends on the last.
Could you tell me why the answer is correct? Because both sides of the equation are equal.
We measured the time it took to run the program and found that it was very fast.
In the first round there were twelve players; after the second round only four remained.
Think about what you know, what you need to find, and how the two are connected.
The experiences in the bank are short, general and useful for many different questions.
Each operation adds, updates or deletes one entry, and the result is stored as JSON.
{"operations": [{"op": "ADD", "text": "Check the answer against the question."}]}
{"op": "UPDATE", "id": 3, "text": "Write each step on its own line."} {"op": "DELETE", "id": 7}
Question: how many legs do three cats and two birds have? Answer: 3 * 4 + 2 * 2 = 16.
Question: what is half of forty? Answer: forty divided by two is twenty, so 40 / 2 = 20.
A fraction such as 3/4 means three parts out of four equal parts; 0.75 is the same number.
The probability of getting heads when tossing a fair coin is one half, or 50 percent.
Find the value of y if 2y + 6 = 14. Subtract 6 from both sides, then divide by 2: y = 4.
The angles of a triangle add up to 180 degrees, and a right angle measures 90 degrees.
If a car travels 60 kilometers per hour for 3 hours, it travels 180 kilometers in total.
Thank you for your question! Let me think about it carefully before I give an answer.
I am not sure, but I believe the correct option is B, since A and C contradict the data.
"""

_NAMES = ("Alice", "Bob", "Carol", "Dan", "Eve", "Frank", "Grace", "Heidi")
_THINGS = ("apples", "books", "coins", "marbles", "pencils", "stickers", "cards", "stones")


def training_corpus() -> list[str]:
    """English and arithmetic lines the tokenizer is trained on (fixed, not seeded)."""
    rng = random.Random(0)
    lines = _ENGLISH.splitlines() * 3  # so that whole English words earn merges
    ops = (
        ("+", "plus", lambda a, b: a + b),
        ("-", "minus", lambda a, b: a - b),
        ("*", "times", lambda a, b: a * b),
    )
    for _ in range(400):
        a, b = rng.randint(0, 999), rng.randint(0, 99)
        sym, word, fn = rng.choice(ops)
        name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
        lines += [
            f"What is {a} {sym} {b}? {a} {word} {b} is {fn(a, b)}, so the answer is {fn(a, b)}.",
            f"{name} has {a} {thing} and gets {b} more. Now {name} has {a + b} {thing}.",
            f"Solve x {sym} {b} = {fn(a, b)}. The answer is x = {a}.",
        ]
    return lines


def build_tokenizer(vision: bool = False, context_length: int = CONTEXT_LENGTH) -> Any:
    """Train a byte-level BPE and wrap it as a ``PreTrainedTokenizerFast`` with ChatML."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    extra = {}
    if vision:
        tok.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
        extra["image_token"] = IMAGE_TOKEN
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=context_length,
        **({"extra_special_tokens": extra} if extra else {}),
    )


def _text_config(tokenizer: Any) -> Any:
    # Llama rather than Qwen2: transformers loads a "qwen2" model's tokenizer as
    # Qwen2Tokenizer, which swaps in an NFC normalizer (so not every text would
    # round-trip); under "llama" the trained tokenizer loads exactly as saved.
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=2 * HIDDEN_SIZE,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HIDDEN_SIZE // 4,
        max_position_embeddings=CONTEXT_LENGTH,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
    )


def _vision_config(tokenizer: Any, text_config: Any) -> Any:
    from transformers import CLIPVisionConfig, LlavaConfig

    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="default",  # drops CLIP's CLS token
        vision_feature_layer=-2,
        tie_word_embeddings=True,
    )


def write_tiny_model(outdir: str | Path, vision: bool = False, seed: int = 0) -> Path:
    """Write a tiny random model (weights, tokenizer, generation config) to ``outdir``.

    Text: a 2-layer Llama decoder (hidden 64, 4 query / 2 KV heads of dim 16,
    context 4096).
    Vision: that model inside a LLaVA with a tiny CLIP tower; ``<image>`` expands to
    16 tokens of a 32x32 image, and ``AutoProcessor.from_pretrained(outdir)`` works.

    >>> path = write_tiny_model("/tmp/tiny", vision=True, seed=1)
    """
    import torch
    from transformers import GenerationConfig

    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory; pass a directory to write to")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vision=vision)
    text_config = _text_config(tokenizer)
    config = _vision_config(tokenizer, text_config) if vision else text_config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if vision:
            from transformers import LlavaForConditionalGeneration

            model = LlavaForConditionalGeneration(config)
        else:
            from transformers import LlamaForCausalLM

            model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[
            tokenizer.convert_tokens_to_ids(IM_END),
            tokenizer.convert_tokens_to_ids(END_OF_TEXT),
        ],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.eval()
    model.save_pretrained(out)
    if vision:
        _processor(tokenizer).save_pretrained(out)
    else:
        tokenizer.save_pretrained(out)
    return out


def _processor(tokenizer: Any) -> Any:
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=CHATML_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
