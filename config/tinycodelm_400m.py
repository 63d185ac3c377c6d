# TinyCodeLM-400M: GPT-2-medium shape (24 layers x 1024, 16 heads) with OLMo/Llama blocks (4x SwiGLU
# hidden size, tied embeddings), context 2048. 436M parameters with our 32k tokenizer.
#   torchrun --nproc_per_node=8 train.py config/tinycodelm_400m.py
# Budget: 72B tokens as TinyCodeLM (137k steps of 0.5M tokens). Learning rate follows GPT-3 Medium
# (Brown et al. 2020, table 2.1: lr 3e-4 with 0.5M-token batches, cosine to 10%).
out_dir = "out/tinycodelm_400m"
data_dir = "data/code"

n_layer = 24
n_head = 16
n_embd = 1024
intermediate_size = 4096
block_size = 2048
tie_embeddings = True
rope_theta = 10000.0

batch_size = 8                      # per GPU; 8 x 2048 tokens per micro-batch
gradient_accumulation_steps = 32    # over all GPUs: 32 x 8 x 2048 = 524,288 tokens per step
max_iters = 137_000
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 2000
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0

eval_interval = 1000
eval_iters = 50
log_interval = 10
compile = True
