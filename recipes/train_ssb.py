"""`python recipes/train_ssb.py` / `accelerate launch recipes/train_ssb.py` in a clone. The recipe itself is
`ssb_trl/scripts/train.py`: after `pip install` it is `ssb-trl train` or `python -m ssb_trl.scripts.train`."""

import runpy

if __name__ == "__main__":  # guarded: spawned worker processes re-import this file
    runpy.run_module("ssb_trl.scripts.train", run_name="__main__", alter_sys=True)
