# try it on the quickstart checkpoint (data/intent_toy as made in config/intent_lora.py's first lines):
#   python train.py config/intent_full.py --init_from=out/quickstart --data_dir=data/intent_toy --out_dir=out/intent_full_toy --block_size=256 --batch_tokens=2048 --gradient_accumulation_steps=1 --epochs=0 --max_iters=20 --warmup_iters=2 --eval_interval=10 --eval_iters=2
#
# Reasoning-augmented code completion (Li et al. 2025), full fine-tuning with our 8-bit AdamW (about 2 bytes
# of optimizer state per parameter instead of 8; the paper's full-model recipe, recommended for small
# models). Data as in config/intent_lora.py:
#   python data.py intent --src intent_train.jsonl --tokenizer out/tinycodelm_150m --out data/intent --max_len 2048
#   python train.py config/intent_full.py
#   torchrun --nproc_per_node=8 train.py config/intent_full.py --parallel=fsdp   # 8-bit state is sharded too
# The six tags are new tokens: train.py grows the embedding/head (new rows = the mean of the others).
task = "sft"
init_from = "out/tinycodelm_150m"
data_dir = "data/intent"
out_dir = "out/intent_full"
block_size = 2048                 # >= the data's --max_len - 1

optimizer = "adamw8bit"
batch_tokens = 16384              # padded tokens per micro-batch (length-bucketed)
gradient_accumulation_steps = 4
epochs = 3                        # sets max_iters
learning_rate = 2e-5
min_lr = 2e-6
lr_schedule = "cosine"
warmup_iters = 30
weight_decay = 0.01
beta2 = 0.999
grad_clip = 1.0

eval_interval = 100
eval_iters = 20
log_interval = 10
