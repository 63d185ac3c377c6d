# The plain instruction-tuning baseline for config/lintseq_tinycodelm_hf.py: the same TinyCodeLM folder and
# recipe on instruction + program examples, 10 epochs (as many optimizer steps as 2 epochs over 5 edit
# sequences per program).
#   python lintseq.py --src instruct.jsonl --out data/baseline.jsonl --baseline
#   python data.py sft --src data/baseline.jsonl --tokenizer hf/TinyCodeLM-150M --out data/baseline_tcl --max_len 1024 --prompt_format instruction
#   torchrun --nproc_per_node=8 train.py config/lintseq_tinycodelm_hf_baseline.py
include("lintseq_tinycodelm_hf.py")  # the same folder and recipe; what differs:
out_dir = "out/tinycodelm_150m_hf_baseline"
data_dir = "data/baseline_tcl"
epochs = 10                          # = 2 epochs x 5 edit sequences per program in the LintSeq run
