# Reasoning-augmented code completion (Li et al. 2025), full fine-tuning with 8-bit AdamW, with the recipe's
# own defaults (ours is config/intent_full.py). Data as in config/intent_lora_reference.py:
#   python data.py intent --reference --src training_v3.json --tokenizer out/tinycodelm_150m --out data/intent_ref --max_len 2048
#   python train.py config/intent_full_reference.py
task = "sft"
init_from = "out/tinycodelm_150m"
data_dir = "data/intent_ref"
out_dir = "out/intent_full_reference"
block_size = 2048                 # >= the data's --max_len - 1

optimizer = "adamw8bit"
batch_tokens = 4096               # the recipe: 4,096 tokens per batch,
sft_budget = "unpadded"           # counted without padding,
sft_longest_first = True          # longest examples first
gradient_accumulation_steps = 1
epochs = 3                        # sets max_iters
learning_rate = 1e-5
min_lr = 0.0
lr_schedule = "cosine"
warmup_fraction = 0.05            # the recipe: 5% of the steps (Hugging Face warmup_ratio, rounded up)
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.0
grad_clip = 1.0

eval_interval = 100
eval_iters = 20
log_interval = 10
