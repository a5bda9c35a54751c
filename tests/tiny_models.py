"""A tiny random Mistral decoder and a BPE tokenizer trained locally: the offline stand-ins for a 7B backbone."""

from __future__ import annotations

from pathlib import Path


CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A small multilingual corpus, enough for a few hundred merges.
_CORPUS = [
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: how to cook rice",
    "Retrieve semantically similar text. The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar. A woman is slicing an onion. Two dogs run across the field.",
    "Le chat est assis sur le tapis. El perro come su comida. Der Hund spielt im Garten.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "The stock market fell sharply after the central bank raised interest rates again.",
    "Classify the sentiment of a given tweet as either positive, negative, or neutral.",
    "user_query positive_document hard_negative_document input_text label misleading_label S1 S2 S3",
    "0 1 2 3 4 5 6 7 8 9 { } [ ] \" : , . ? ! ' - _ ( )",
]


def build_tokenizer(save_dir: str | Path, vocab_size: int = 512):
    """A byte-level BPE tokenizer with <s>, </s>, <pad>, <unk> and a ChatML template, saved to ``save_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=512,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(save_dir)
    return fast


def build_tiny_mistral(save_dir: str | Path, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> Path:
    """Save a random ``MistralForCausalLM`` (hidden 64, 2 layers) with its tokenizer to ``save_dir``."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    save_dir = Path(save_dir)
    tokenizer = build_tokenizer(save_dir)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        sliding_window=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = MistralForCausalLM(config)
    model.save_pretrained(save_dir)
    return save_dir
