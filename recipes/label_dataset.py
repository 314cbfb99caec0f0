"""`python recipes/label_dataset.py` / `accelerate launch recipes/label_dataset.py` in a clone. The recipe itself is
`ssb_trl/scripts/label.py`: after `pip install` it is `ssb-trl label` or `python -m ssb_trl.scripts.label`."""

import runpy

if __name__ == "__main__":  # guarded: spawned worker processes re-import this file
    runpy.run_module("ssb_trl.scripts.label", run_name="__main__", alter_sys=True)
