# try it on the quickstart checkpoint (a plumbing check on CPU in minutes: MBPP's fields stand in for real
# intent records; build out/quickstart with `python train.py config/quickstart.py` first):
#   python data.py intent --src benchmarks/mbpp.jsonl --fields left_context=test_setup_code,signature=text,reasoning=text,intention=text,code=code --tokenizer out/quickstart --out data/intent_toy --max_len 256
#   python train.py config/intent_lora.py --init_from=out/quickstart --data_dir=data/intent_toy --out_dir=out/intent_lora_toy --block_size=256 --batch_tokens=2048 --gradient_accumulation_steps=1 --epochs=0 --max_iters=20 --warmup_iters=2 --eval_interval=10 --eval_iters=2
#
# Reasoning-augmented code completion (Li et al. 2025, "Your Coding Intent is Secretly in the Context and
# You Should Deliberately Infer It Before Completion"), LoRA variant. The model reads the left context and
# the function signature, then writes <reasoning>...</reasoning><intention>...</intention><code>...</code>.
#   python data.py intent --src intent_train.jsonl --tokenizer out/tinycodelm_150m --out data/intent --max_len 2048
#   python train.py config/intent_lora.py                                     # one GPU
#   torchrun --nproc_per_node=8 train.py config/intent_lora.py                 # DDP (add --parallel=fsdp to shard)
#   python train.py config/intent_lora.py --init_from=hf/CodeLlama-7b-Python-hf   # a Hugging Face Llama folder
# (make the data with the same --tokenizer as init_from). The six tags are new tokens: train.py grows the
# embedding/head (new rows = the mean of the others) and, with LoRA, trains those rows besides the adapters.
# The checkpoint in out_dir is merged (a plain checkpoint eval.py reads); lora_save='adapters' keeps
# only the adapters and a reference to the base. Export: python hf.py export --ckpt out/intent_lora --to hf/intent_lora
task = "sft"
init_from = "out/tinycodelm_150m"
data_dir = "data/intent"
out_dir = "out/intent_lora"
block_size = 2048                 # >= the data's --max_len - 1

lora_r = 16
lora_alpha = 32.0
lora_dropout = 0.05
lora_targets = ("q", "k", "v", "o", "gate", "up", "down")
lora_save = "merged"

batch_tokens = 16384              # padded tokens per micro-batch (length-bucketed); batch_size is unused
gradient_accumulation_steps = 4   # micro-batches per optimizer step, over all processes
epochs = 3                        # sets max_iters
learning_rate = 2e-4              # the usual LoRA learning rate (10x full fine-tuning)
min_lr = 2e-5
lr_schedule = "cosine"
warmup_iters = 30
weight_decay = 0.0
grad_clip = 1.0
optimizer = "adamw"

eval_interval = 100
eval_iters = 20
log_interval = 10
