"""One rank of test_trl.py's two-process GRPO run (started by torch.distributed.run)."""

import json
import os
import sys

from laser_router_client import LaserRouterClient
from laser_router_client.trl import LaserRouterGRPO
from test_trl import trainer

address, output_dir = sys.argv[1], sys.argv[2]
laser = LaserRouterGRPO(LaserRouterClient(address), router="grpo-ranks")
trainer(laser, output_dir, max_steps=4, batch_size=6, ddp_backend="gloo").train()
with open(os.path.join(output_dir, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"decisions": laser.decisions, "reports": laser.reports}, f)
