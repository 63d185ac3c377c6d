"""Test material for the Hugging Face families (imported by test_hf_families.py and test_hf_tokenizer.py):
small byte-level BPE tokenizer.json files trained with `tokenizers` in the GPT-NeoX and Llama-3 styles, and
small random models of every supported family built and saved by transformers itself. Run under torchrun
(`python -m torch.distributed.run --standalone --nproc_per_node=2 tests/hf_families.py RUNS.json`) it trains
each run of a JSON list of train.py argument lists, one after another in the same ranks: one launch for
several families."""
import json
import os
import sys

import torch

from conftest import stdlib_sample
from hf import QWEN2_SPLIT  # Qwen2.5's split: single digits (transformers >= 5 imposes it on qwen2 folders)

# Llama-3's pre-tokenizer split (contractions, letters, 1-3 digit runs, punctuation, newlines, spaces)
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
STYLES = {  # special tokens in id order (they come first), eos, bos, pad
    "neox": {"specials": ["<|endoftext|>", "<|padding|>"], "eos": "<|endoftext|>", "bos": None, "pad": "<|padding|>"},
    "llama3": {"specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], "eos": "<|end_of_text|>",
               "bos": "<|begin_of_text|>", "pad": None},
    "qwen2": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "eos": "<|endoftext|>", "bos": None,
              "pad": "<|endoftext|>"},
}


def train_bpe(folder, style, vocab_size=700, texts=None):
    """folder/tokenizer.json + tokenizer_config.json: a byte-level BPE trained on stdlib code. 'neox': NFC
    normalizer and ByteLevel's own GPT-2 split (GPT-NeoX-20B's layout); 'llama3': no normalizer, a Split
    regex then ByteLevel without its regex (Llama-3's layout); 'qwen2': NFC, Qwen's Split, ByteLevel (Qwen2.5's)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    s = STYLES[style]
    tk = Tokenizer(models.BPE())
    if style == "neox":
        tk.normalizer = normalizers.NFC()
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        if style == "qwen2":
            tk.normalizer = normalizers.NFC()
        split = pre_tokenizers.Split(Regex(QWEN2_SPLIT if style == "qwen2" else LLAMA3_SPLIT), behavior="isolated")
        tk.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=s["specials"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts or stdlib_sample(150_000), trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tk.save(str(folder / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": s["eos"], "bos_token": s["bos"], "pad_token": s["pad"],
           "add_bos_token": False, "clean_up_tokenization_spaces": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def family_config(family, vocab_size, **kw):
    """A small transformers config of the family (2 layers, 64 wide), with what makes the family itself."""
    import transformers as T

    common = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=128)
    if family == "gpt_neox":  # Pythia: parallel residual, LayerNorm with bias, rotary on a quarter, GeLU, untied
        c = T.GPTNeoXConfig(**common, intermediate_size=128, rotary_pct=0.25, use_parallel_residual=True)
    elif family == "olmo":  # TinyCodeLM: non-parametric LayerNorm, SwiGLU, tied
        c = T.OlmoConfig(**common, num_key_value_heads=4, intermediate_size=96, tie_word_embeddings=True)
    elif family == "qwen2":  # q/k/v biases, GQA, tied
        c = T.Qwen2Config(**common, num_key_value_heads=2, intermediate_size=96, tie_word_embeddings=True)
    else:  # llama with RoPE scaling; original context below the test length so every branch of llama3 matters
        c = T.LlamaConfig(**common, num_key_value_heads=2, intermediate_size=96, tie_word_embeddings=False)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def make_family_folder(folder, family, tokenizer_dir, vocab_extra=13, seed=0, **kw):
    """A random model of the family saved by save_pretrained, with the tokenizer files copied in. Every
    parameter is perturbed (biases and norm scales too, which transformers initialises to 0 and 1)."""
    import shutil

    import transformers as T

    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    n = max(vocab["model"]["vocab"].values()) + 1
    cfg = family_config(family, n + vocab_extra, **kw)
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if name.endswith("bias") or p.dim() == 1 else 0.02))
    model.save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / f, folder / f)
    return folder


def transformers_logits(folder, ids):
    import transformers as T

    m = T.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(ids).logits, type(m).__name__


def train_runs(runs_file):
    """train.py's main() on each argument list in runs_file, in order (under torchrun: every rank)."""
    import train  # here, not at the top: the test modules that import this file need not load train.py

    for args in json.loads(open(runs_file).read()):
        code = train.main(args)
        if code:
            raise SystemExit(code)


if __name__ == "__main__":
    train_runs(sys.argv[1])
    # as train.py ends a distributed run: no process-group or interpreter teardown (they hung now and then)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
