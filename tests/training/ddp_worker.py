"""Run by test_train.py under torchrun: a short DDP training run; each rank writes a digest
of its final weights so the test can check that all ranks agree. Arguments: OUT DATA
[SETTING=VALUE...]."""

import hashlib
import os
import sys

import torch

from training.config import load_config
from training.train import Trainer

if __name__ == "__main__":
    out, data = sys.argv[1], sys.argv[2]
    config = load_config(None, [f"data={data}", f"out={out}", "model=mobilenetv3_small", "input_size=64",
                                "batch_size=4", "epochs=1", "max_steps=2", "workers=0", "warmup_steps=1",
                                "pretrained=null", "device=cpu", *sys.argv[3:]])  # fmt: skip
    trainer = Trainer(config)
    trainer.fit()
    digest = hashlib.sha256()
    # Parameters (not BatchNorm running stats: each rank updates those from its own last batch).
    for tensor in trainer.model.parameters():
        digest.update(tensor.detach().cpu().numpy().tobytes())
    with open(os.path.join(out, f"rank{os.environ['RANK']}.sha"), "w") as fh:
        fh.write(digest.hexdigest())
    torch.distributed.destroy_process_group()
