# TinyCodeLM-150M: GPT-2-small shape (12 layers x 768, 12 heads) with OLMo/Llama blocks (RMSNorm, RoPE,
# SwiGLU with a 4x hidden size as OLMo, tied embeddings as OLMo's small models), context 2048.
# 138M parameters with our 32k tokenizer (152M with GPT-2's 50k vocabulary, as the released model).
#   torchrun --nproc_per_node=8 train.py config/tinycodelm_150m.py
# Budget: TinyCodeLM saw 72B tokens (two epochs of a Python + web-text mix); 137k steps of 0.5M tokens.
# Batch and learning rate follow GPT-3 Small (Brown et al. 2020, table 2.1: 0.5M-token batches, lr 6e-4,
# cosine to 10%), the usual choice at this size; nanoGPT's GPT-2 124M recipe uses the same.
out_dir = "out/tinycodelm_150m"
# TinyCodeLM's mixture: web text (FineWeb) and Python (The Stack), both tokenized with one tokenizer:
#   python data.py corpus --src FINEWEB_TEXT --out data/text
#   python data.py corpus --src YOUR_PYTHON --tokenizer data/text/tokenizer.model --out data/code
# Each micro-batch draws its corpus by weight (deterministic per seed, step and micro-batch, so a resume
# is exact); the log reports the tokens seen per corpus. For one corpus: data_mix = () and data_dir.
data_mix = ("data/text:0.5", "data/code:0.5")

n_layer = 12
n_head = 12
n_embd = 768
intermediate_size = 3072
block_size = 2048
tie_embeddings = True
rope_theta = 10000.0

batch_size = 16                     # per GPU: 16 x 2048 tokens fits an 80 GB GPU in bf16 without checkpointing
gradient_accumulation_steps = 16    # over all GPUs: 16 x 16 x 2048 = 524,288 tokens per step
max_iters = 137_000                 # 137k x 0.5M = 72B tokens
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 2000
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0

eval_interval = 1000
eval_iters = 50
log_interval = 10
compile = True
