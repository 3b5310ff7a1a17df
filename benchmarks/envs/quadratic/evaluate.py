import json
import os

ck = json.load(open(os.path.join(os.environ["IDEAFORGE_OUT"], "ckpt.json")))
json.dump({"status": "ok", "metrics": {"score": ck["score"]}}, open(os.environ["IDEAFORGE_RESULT"], "w"))
