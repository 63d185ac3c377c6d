# try it on the quickstart checkpoint (MBPP's programs; build out/quickstart with config/quickstart.py first):
#   python lintseq.py --src benchmarks/mbpp.jsonl --prompt_field text --code_field code --out data/baseline_toy.jsonl --baseline --limit 300
#   python data.py sft --src data/baseline_toy.jsonl --tokenizer out/quickstart --out data/baseline_toy --max_len 256 --prompt_format instruction
#   python train.py config/baseline_sft_150m.py --init_from=out/quickstart --data_dir=data/baseline_toy --out_dir=out/baseline_toy --block_size=256 --batch_size=8 --gradient_accumulation_steps=1 --epochs=0 --max_iters=20 --eval_interval=10 --eval_iters=2
#
# Plain instruction tuning of TinyCodeLM-150M: the baseline LintSeq is compared with (Piterbarg, Pinto,
# Fergus, ICLR 2025). Same programs, same recipe and the same number of optimizer steps as
# config/lintseq_sft_150m.py: 10 epochs over instruction + "\n" + program, vs 2 epochs over 5 edit sequences
# per program. Reported: HumanEval pass@1 9.1 (this) vs 12.8 (LintSeq).
#   python lintseq.py --src instruct.jsonl --out data/baseline.jsonl --baseline    # skips what LintSeq skips
#   python data.py sft --src data/baseline.jsonl --tokenizer out/tinycodelm_150m --out data/baseline_sft --max_len 1024 --prompt_format instruction
#   torchrun --nproc_per_node=8 train.py config/baseline_sft_150m.py
# Reference differences (sum-reduced loss, truncation instead of dropping): see config/lintseq_sft_150m.py.
include("lintseq_sft_150m.py")      # the same recipe; what differs:
out_dir = "out/tinycodelm_150m_baseline"
data_dir = "data/baseline_sft"
epochs = 10                          # = 2 epochs x 5 edit sequences per program in the LintSeq run
