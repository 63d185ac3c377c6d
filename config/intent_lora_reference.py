# Reasoning-augmented code completion (Li et al. 2025), LoRA, with the recipe's own defaults (ours, tuned for
# small models, is config/intent_lora.py). Data in the recipe's layout, fields and 200-token filter margin:
#   python data.py intent --reference --src training_v3.json --tokenizer out/tinycodelm_150m --out data/intent_ref --max_len 2048
#   python train.py config/intent_lora_reference.py
# What train.py cannot express yet (so this file is the closest it gets; see the README table):
#   - the recipe trains the whole embedding matrix and output head beside the adapters; lora_new_tokens
#     trains only the rows of the six added tags
#   - its 2,048-token budget counts real tokens (data.SFTSchedule budget='unpadded') and it visits the
#     longest examples first (longest_first=True); train.py's batch_tokens counts padded tokens, shuffled
#   - its warmup is 5% of the steps; train.py takes warmup_iters: set it to 5% of the max_iters it logs
task = "sft"
init_from = "out/tinycodelm_150m"
data_dir = "data/intent_ref"
out_dir = "out/intent_lora_reference"
block_size = 2048                 # >= the data's --max_len - 1

lora_r = 32
lora_alpha = 64.0
lora_dropout = 0.05
lora_targets = ("q", "k", "v", "o", "gate", "up", "down")   # all seven projections
lora_new_tokens = True
lora_save = "merged"

batch_tokens = 2048               # the recipe: 2,048 unpadded tokens per batch (here: padded, see above)
gradient_accumulation_steps = 1
epochs = 2                        # sets max_iters
learning_rate = 1e-4
min_lr = 0.0                      # cosine to zero (Hugging Face's cosine schedule)
lr_schedule = "cosine"
warmup_iters = 50                 # 5% of the steps in the recipe: set to max_iters / 20 for your data
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.0
grad_clip = 1.0
optimizer = "adamw"

eval_interval = 100
eval_iters = 20
log_interval = 10
