# Quickstart: a small code model trained on this machine's Python standard library, on 2 CPU cores in
# about 10 minutes. The first run prepares data/stdlib_8k itself (an 8k-piece tokenizer and token
# shards, about 20 s). Its checkpoint in out/quickstart is what `python eval.py --ckpt out/quickstart`
# reads. An 8k vocabulary keeps the output layer from dominating a model this small.
out_dir = "out/quickstart"
data_src = "stdlib"
data_dir = "data/stdlib_8k"
data_vocab_size = 8192

n_layer = 4
n_head = 4
n_embd = 256
block_size = 256
tie_embeddings = True

batch_size = 8
gradient_accumulation_steps = 2    # 16 x 256 = 4,096 tokens per step; 2 so torchrun --nproc_per_node=2 runs it as is
max_iters = 300
learning_rate = 2e-3        # small models take a high learning rate
min_lr = 2e-4
warmup_iters = 30
weight_decay = 0.1

eval_interval = 50
eval_iters = 10
log_interval = 10

# at the end: what the model writes now, sampled at temperature 0.8 (nanoGPT's sample step)
sample_prompt = "def fibonacci(n):\n"
sample_tokens = 100
