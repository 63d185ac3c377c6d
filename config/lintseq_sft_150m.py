# try it on the quickstart checkpoint (MBPP's programs; build out/quickstart with config/quickstart.py first):
#   python lintseq.py --src benchmarks/mbpp.jsonl --prompt_field text --code_field code --out data/lintseq_toy.jsonl -s 2 --limit 300
#   python data.py sft --src data/lintseq_toy.jsonl --tokenizer out/quickstart --out data/lintseq_toy --max_len 256 --edit_format lintseq
#   python train.py config/lintseq_sft_150m.py --init_from=out/quickstart --data_dir=data/lintseq_toy --out_dir=out/lintseq_toy --block_size=256 --batch_size=8 --gradient_accumulation_steps=1 --epochs=0 --max_iters=20 --eval_interval=10 --eval_iters=2
#
# LintSeq instruction tuning of TinyCodeLM-150M (Piterbarg, Pinto, Fergus, "Training Language Models on
# Synthetic Edit Sequences Improves Code Synthesis", ICLR 2025): the paper's TinyCodeLM recipe, AdamW,
# lr 3e-4, weight decay 0.01, global batch 512, linear schedule, sequences up to 1,024 tokens, 2 epochs
# over s = 5 edit sequences per program, which is the same number of optimizer steps as 10 epochs of plain
# instruction tuning (config/baseline_sft_150m.py). Reported: HumanEval pass@1 9.1 -> 12.8 over that baseline.
#   python lintseq.py --src instruct.jsonl --out data/lintseq.jsonl -s 5
#   python data.py sft --src data/lintseq.jsonl --tokenizer out/tinycodelm_150m --out data/lintseq_sft \
#       --max_len 1024 --edit_format lintseq
#   torchrun --nproc_per_node=8 train.py config/lintseq_sft_150m.py
#   python eval.py --ckpt out/tinycodelm_150m_lintseq      # prompts end in "\n<|diff|>", edits decoded
# From the reference fine-tuning script (src/scripts/finetuning_scripts/tinycodelm_150m/editseq.sh): warmup
# ratio 0.001 and Hugging Face AdamW defaults (betas 0.9/0.999); it sums the token losses of a batch
# (--reduce_loss sum) where train.py takes their mean, and truncates over-long examples where data.py
# drops them (--max_len 1024).
task = "sft"
init_from = "out/tinycodelm_150m"    # the pretrained base checkpoint (config/tinycodelm_150m.py)
out_dir = "out/tinycodelm_150m_lintseq"
data_dir = "data/lintseq_sft"
block_size = 1024                    # the paper's max sequence length for fine-tuning

batch_size = 16                      # examples per micro-batch
gradient_accumulation_steps = 32     # micro-batches per step over all GPUs: 16 x 32 = 512 examples
epochs = 2                           # x 5 sequences per program = 10 passes, the baseline's steps
learning_rate = 3e-4
min_lr = 0.0                         # linear decay to zero, as transformers' 'linear' schedule
lr_schedule = "linear"
warmup_fraction = 0.001              # the paper: warmup over 0.1% of the steps (rounded up)
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0

eval_interval = 100
eval_iters = 20
log_interval = 10
