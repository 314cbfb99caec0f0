"""`python recipes/evaluate.py` / `accelerate launch recipes/evaluate.py` in a clone. The recipe itself is
`ssb_trl/scripts/evaluate.py`: after `pip install` it is `ssb-trl evaluate` or `python -m ssb_trl.scripts.evaluate`."""

import runpy

if __name__ == "__main__":  # guarded: spawned worker processes re-import this file
    runpy.run_module("ssb_trl.scripts.evaluate", run_name="__main__", alter_sys=True)
