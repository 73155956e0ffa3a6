"""A tiny randomly initialised causal LM with a character tokenizer, saved as a local model folder.

It stands in for a pretrained LM wherever the whole code path must run in seconds: the test
suite and the ``smoke`` pipeline preset. It goes through the same ``from_pretrained`` loading
as any other base model.
"""

from __future__ import annotations

from pathlib import Path

from kalm_envs.language import INSTRUCTION_CHARSET

SPECIAL_TOKENS = ("<unk>", "<pad>", "<bos>", "<eos>")


def make_tiny_lm(folder: Path, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny Llama (vocabulary: our instruction characters + newline) into ``folder``."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    vocabulary = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *sorted(set(INSTRUCTION_CHARSET + "\n"))])}
    core = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    config = LlamaConfig(
        vocab_size=len(vocabulary), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=vocabulary["<bos>"], eos_token_id=vocabulary["<eos>"], pad_token_id=vocabulary["<pad>"],
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
