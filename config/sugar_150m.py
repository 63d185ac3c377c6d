# try it on the quickstart checkpoint (sugars mined from MBPP's programs; build out/quickstart with config/quickstart.py first):
#   python sugar.py mine --src benchmarks/mbpp.jsonl --text_field code --tokenizer out/quickstart --out data/sugars_toy.json --max_sugars 200
#   python sugar.py apply --sugars data/sugars_toy.json --src benchmarks/mbpp.jsonl --text_field code --tokenizer out/quickstart --out data/mbpp_sugar --joint_ratio 0.25
#   python train.py config/sugar_150m.py --init_from=out/quickstart --data_dir=data/mbpp_sugar --out_dir=out/sugar_toy --device=cpu --compile=False --batch_size=4 --block_size=128 --gradient_accumulation_steps=1 --max_iters=20 --warmup_iters=5 --eval_interval=10 --eval_iters=2 --eval_humaneval_interval=0
#
# Token Sugar: continued pretraining of a TinyCodeLM-150M checkpoint on a mix of sugarized (75%) and
# plain (25%) code, so the model reads and writes shorthand (Token Sugar paper: HumanEval pass@1 about
# equal after this, with fewer tokens per program). The sugar tokens are added to the checkpoint's
# tokenizer; train.py grows the embedding (new rows = the mean of the old ones) and copies the sugar
# table into the checkpoint's config.json, so eval.py desugars generations before running them.
#
#   python sugar.py mine  --src YOUR_CODE --tokenizer out/tinycodelm_150m --out sugars.json \
#                         --threshold 0.01 --min_reward 2 --max_sugars 2000 --rank files
#   python sugar.py apply --sugars sugars.json --src YOUR_CODE --tokenizer out/tinycodelm_150m \
#                         --out data/code_sugar --joint_ratio 0.25        # [--start_id N: reuse rows]
#   torchrun --nproc_per_node=8 train.py config/sugar_150m.py
#   python eval.py --ckpt out/sugar_150m
#
init_from = "out/tinycodelm_150m"   # the checkpoint to continue (its shape and tokenizer are kept)
out_dir = "out/sugar_150m"
data_dir = "data/code_sugar"        # written by `sugar.py apply` with the checkpoint's tokenizer
task = "pretrain"

block_size = 2048
batch_size = 16                     # per GPU: 16 x 2048 tokens
gradient_accumulation_steps = 16    # over 8 GPUs: 16 x 16 x 2048 = 524,288 tokens per step
max_iters = 4000                    # ~2.1B tokens: a continued-pretraining budget (~3% of the 72B of pretraining)
learning_rate = 3e-4                # half the pretraining peak: the new rows must move, the rest should not drift far
min_lr = 3e-5
warmup_iters = 200
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0

eval_interval = 500
eval_iters = 50
log_interval = 10
eval_humaneval_interval = 1000      # greedy pass@1 with desugaring, as eval.py does
compile = True
