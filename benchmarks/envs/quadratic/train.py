"""A synthetic research problem: a noisy score of five settings with an optimum away
from the baseline. Each setting's best value is 2-4 doubling steps from its start, so
single changes help a little and combined, pushed-further changes help a lot: the
shape that separates a search with feedback from independent sampling.

With SLEEP_S set (profile `varied`, benchmarks/async_vs_sync.py) a trial takes 0.2-1.8 x
SLEEP_S seconds, drawn per idea and seed: trials of varying length, as real ones are."""
import json
import math
import os
import random
import time

LR = 0.1  # learning rate
WIDTH = 8  # channels
DEPTH = 2  # layers
WARMUP = 400  # steps
DECAY = 0.5  # final LR fraction

seed = int(os.environ.get("IDEAFORGE_SEED", 0))
noise = random.Random(seed).gauss(0, 0.2)
score = 20.0 - (math.log2(LR / 0.8) ** 2 + math.log2(WIDTH / 64) ** 2 + math.log2(DEPTH / 8) ** 2
                + math.log2(WARMUP / 50) ** 2 + math.log2(DECAY / 0.0625) ** 2) + noise
mean_s = float(os.environ.get("SLEEP_S", 0))  # seconds a trial takes on average; 0: at once
if mean_s > 0:
    draw = random.Random(f"{LR},{WIDTH},{DEPTH},{WARMUP},{DECAY},{seed}").random()
    time.sleep(mean_s * (0.2 + 1.6 * draw))
print(f"METRIC step=1 score={score:.4f}")
json.dump({"score": score}, open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json"), "w"))
