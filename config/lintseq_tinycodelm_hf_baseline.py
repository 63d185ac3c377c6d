# The plain instruction-tuning baseline for config/lintseq_tinycodelm_hf.py: the same TinyCodeLM folder and
# recipe on instruction + program examples, 10 epochs (as many optimizer steps as 2 epochs over 5 edit
# sequences per program).
#   python lintseq.py --src instruct.jsonl --out data/baseline.jsonl --baseline
#   python data.py sft --src data/baseline.jsonl --tokenizer hf/TinyCodeLM-150M --out data/baseline_tcl --max_len 1024 --prompt_format instruction
#   torchrun --nproc_per_node=8 train.py config/lintseq_tinycodelm_hf_baseline.py
task = "sft"
init_from = "hf/TinyCodeLM-150M"
out_dir = "out/tinycodelm_150m_hf_baseline"
data_dir = "data/baseline_tcl"
block_size = 1024

batch_size = 16
gradient_accumulation_steps = 32     # 16 x 32 = 512 examples per step
epochs = 10                          # = 2 epochs x 5 edit sequences per program in the LintSeq run
learning_rate = 3e-4
min_lr = 0.0
lr_schedule = "linear"
warmup_fraction = 0.001              # the LintSeq paper: warmup over 0.1% of the steps (rounded up)
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0

eval_interval = 100
eval_iters = 20
log_interval = 10
