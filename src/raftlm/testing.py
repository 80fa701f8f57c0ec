"""Tiny random-init models built in-process (2 layers, 32 dims) for tests and smoke runs: no downloads,
well under a second. ``--model tiny-random-llama`` / ``tiny-random-bert`` load them by name."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

TINY_CORPUS = [
    "the similarity between the two sentences is equal to 3",
    "a man is playing a guitar. a woman is slicing an onion.",
    "what is the rating of this review? it was great, five stars, 4.5 out of 5",
    "input score: 12.34. output score: 56.78",
    "the movie was bad and the plot was boring; 1 2 3 4 5 6 7 8 9 0",
    "answer: yes no maybe a b c d e january february march april may",
]


def tiny_tokenizer(isolate_digits: bool = True):
    """A small byte-level BPE trained in-process. With ``isolate_digits`` each digit and the space
    before it are separate tokens (as in Gemma and SmolLM2); without, ' 3' can merge into one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if isolate_digits
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def tiny_random_llama(seed: int = 0, dropout: float = 0.0, isolate_digits: bool = True):
    """2 layers, 32 dims, random init: for tests and smoke runs (well under a second)."""
    tok = tiny_tokenizer(isolate_digits)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        attention_dropout=dropout,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval(), tok


def tiny_random_bert(seed: int = 0):
    """A 2-layer, 32-dim BERT encoder with the tiny BPE tokenizer: for encoder-head tests."""
    from transformers import BertConfig, BertModel

    tok = tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return BertModel(config).eval(), tok
