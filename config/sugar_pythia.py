# Token Sugar continued pretraining of a Pythia model (GPTNeoXForCausalLM, GPT-NeoX tokenizer.json) from its
# Hugging Face folder: context 512, lr 1.8e-4 with cosine decay, on 75% sugarized / 25% plain code (the
# mix `sugar.py apply --joint_ratio 0.25` writes). The sugar tokens join the tokenizer.json vocabulary as
# added tokens; train.py grows the embedding (Pythia's is already padded to 50,304 rows, so the first 24
# new tokens take padding rows) and copies the sugar table into the checkpoint for eval.py.
#   python sugar.py mine  --src YOUR_CODE --tokenizer hf/pythia-160m --out sugars.json --max_sugars 2000
#   python sugar.py apply --sugars sugars.json --src YOUR_CODE --tokenizer hf/pythia-160m \
#                         --out data/code_sugar_pythia --joint_ratio 0.25
#   torchrun --nproc_per_node=8 train.py config/sugar_pythia.py
#   python eval.py --ckpt out/sugar_pythia_160m
#   python hf.py export --ckpt out/sugar_pythia_160m --to hf/pythia-160m-sugar     # GPT-NeoX again
# Qwen2.5 instead: --init_from=hf/Qwen2.5-0.5B --data_dir=data/code_sugar_qwen (apply with its tokenizer).
init_from = "hf/pythia-160m"
out_dir = "out/sugar_pythia_160m"
data_dir = "data/code_sugar_pythia"
task = "pretrain"

block_size = 512
batch_size = 32                     # per GPU: 32 x 512 tokens
gradient_accumulation_steps = 4     # over 8 GPUs: 32 x 4 x 512 = 65,536 tokens per step
max_iters = 20000
learning_rate = 1.8e-4
min_lr = 1.8e-5
lr_schedule = "cosine"
warmup_iters = 200
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0

eval_interval = 1000
eval_iters = 50
log_interval = 10
eval_humaneval_interval = 5000
