"""The `lorasc train --help` text of the flags whose field needs more than its name."""

FLAG_HELP = {"num_cycles": "the run cut into T equal cycles (default here: 4; the library's LoRASCConfig default is one cycle per epoch)",
             "cycle_steps": "a new expert every N optimizer steps instead of --num-cycles (pass --num-cycles none with it)",
             "seed": "the run's one seed: the new head, the data order, the noise and each expert (default 0)",
             "max_grad_norm": "clip the trainable parameters' global gradient norm to it (default 1.0, as Trainer; 0 or none: no clipping)",
             "save_total_limit": "how many checkpoints the run keeps, the newest (default 2)",
             "warmup_ratio": "warmup as a share of the run's steps, rounded up (as Trainer); set, it replaces --warmup-steps",
             "per_device_train_batch_size": "transformers' name: --batch-size (the global batch) is it × --grad-accum × the processes",
             "bf16": "transformers' name: --dtype bfloat16", "fp16": "transformers' name: --dtype float16",
             "chat_template": "causal LM: auto renders a prompt and its response as a user and an assistant turn of the tokenizer's chat template "
                              "when it has one, the loss on the assistant turn only (as TRL); none: plain text, the response then EOS",
             "quantize": "load the backbone in 4 bits (nf4, fp4) or 8 bits (int8) with bitsandbytes (pip install 'lorasc[qlora]'); "
                         "its weights are never rewritten: the cascade is carried beside them, exactly (needs --noise-lambda 0)",
             "quantize_double_quant": "4-bit: quantize the quantization constants too (QLoRA's double quantization)",
             "compute_dtype": "4-bit: the dtype the quantized layers compute in (default: --dtype)",
             "slow_budget": "--quantize: the carried stack's float32 bytes at most this share of the quantized adapted weights' (default 0.5)",
             "tasks": "a sequence of tasks instead of --data: task files (a.csv,b.csv,…) or a built-in sequence: tweets-domains, "
                      "tweets-domains-6, olora4 (docs/continual.md)",
             "task_tests": "each task's test file, in the order of --tasks (default: a seeded 10 % of each task, at most 500 rows)",
             "task_order": "reverse, or every task's name in the order to train them",
             "cycles_per_task": "the cascade's cycles in each task (default 2; inc-lora, o-lora and ema fix 1)",
             "cl_head": "per-task (default): one head over every task's labels, each task scored on its own rows; shared: one head, same labels",
             "replay": "keep N training examples of the finished tasks (a reservoir); half of each later batch comes from them",
             "fwt_reference": "a finished --method single run on the same tasks: forward transfer against its accuracies",
             "slow_overflow": "--quantize: past --slow-budget, stop before training (default), or compress: truncate the stack by SVD, "
                              "no longer exact (the error per layer goes to metrics.json)"}
