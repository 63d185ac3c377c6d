# Reasoning-augmented code completion (Li et al. 2025), LoRA, with the recipe's own defaults (ours, tuned for
# small models, is config/intent_lora.py). Data in the recipe's layout, fields and 200-token filter margin:
#   python data.py intent --reference --src training_v3.json --tokenizer out/tinycodelm_150m --out data/intent_ref --max_len 2048
#   python train.py config/intent_lora_reference.py
# Every value below is the recipe's (see the README table); against ours it trains the whole embedding matrix
# and output head beside the adapters, counts its batch budget in real tokens, visits the longest examples
# first, and warms up over 5% of the steps.
task = "sft"
init_from = "out/tinycodelm_150m"
data_dir = "data/intent_ref"
out_dir = "out/intent_lora_reference"
block_size = 2048                 # >= the data's --max_len - 1

lora_r = 32
lora_alpha = 64.0
lora_dropout = 0.05
lora_targets = ("q", "k", "v", "o", "gate", "up", "down")   # all seven projections
lora_train_embeddings = True      # the recipe trains embed_tokens and lm_head in full (PEFT modules_to_save);
                                  # saved whole beside the adapters with lora_save='adapters'
lora_save = "merged"

batch_tokens = 2048               # the recipe: 2,048 tokens per batch,
sft_budget = "unpadded"           # counted without padding,
sft_longest_first = True          # longest examples first
gradient_accumulation_steps = 1
epochs = 2                        # sets max_iters
learning_rate = 1e-4
min_lr = 0.0                      # cosine to zero (Hugging Face's cosine schedule)
lr_schedule = "cosine"
warmup_fraction = 0.05            # the recipe: 5% of the steps (Hugging Face warmup_ratio, rounded up)
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.0
grad_clip = 1.0
optimizer = "adamw"

eval_interval = 100
eval_iters = 20
log_interval = 10
