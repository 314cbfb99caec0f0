"""`python recipes/prepare_ssb_data.py` / `accelerate launch recipes/prepare_ssb_data.py` in a clone. The recipe itself is
`ssb_trl/scripts/prepare.py`: after `pip install` it is `ssb-trl prepare` or `python -m ssb_trl.scripts.prepare`."""

import runpy

if __name__ == "__main__":  # guarded: spawned worker processes re-import this file
    runpy.run_module("ssb_trl.scripts.prepare", run_name="__main__", alter_sys=True)
