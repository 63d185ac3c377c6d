# LintSeq instruction tuning of the released TinyCodeLM-150M (Piterbarg, Pinto, Fergus, ICLR 2025) from its
# Hugging Face folder: OLMo blocks (OlmoForCausalLM) with the GPT-NeoX byte-level BPE tokenizer.json, read
# by hf.py (`tokenizers` must be installed). The paper's hyperparameters: AdamW, lr 3e-4, weight decay 0.01,
# linear decay, warmup 0.1% of the steps, batch 512, sequences up to 1,024 tokens, 2 epochs over the edit
# sequences (10 for the plain baseline: config/lintseq_tinycodelm_hf_baseline.py).
#   python hf.py info --ckpt hf/TinyCodeLM-150M          # OlmoForCausalLM, tokenizer.json, 50,280 tokens
#   python lintseq.py --src instruct.jsonl --out data/lintseq.jsonl -s 5
#   python data.py sft --src data/lintseq.jsonl --tokenizer hf/TinyCodeLM-150M --out data/lintseq_tcl \
#       --max_len 1024 --edit_format lintseq               # <|diff|> joins the vocabulary (row 50,280 of 50,304)
#   torchrun --nproc_per_node=8 train.py config/lintseq_tinycodelm_hf.py
#   python eval.py --ckpt out/tinycodelm_150m_hf_lintseq
#   python hf.py export --ckpt out/tinycodelm_150m_hf_lintseq --to hf/TinyCodeLM-150M-lintseq   # OLMo again
# For TinyCodeLM-400M: --init_from=hf/TinyCodeLM-400M --out_dir=out/tinycodelm_400m_hf_lintseq.
include("lintseq_sft_150m.py")      # the paper's recipe (lr 3e-4, wd 0.01, linear, 0.1% warmup, batch 512); what differs:
init_from = "hf/TinyCodeLM-150M"     # a Hugging Face folder, read directly (or `hf.py import` it first)
out_dir = "out/tinycodelm_150m_hf_lintseq"
data_dir = "data/lintseq_tcl"
