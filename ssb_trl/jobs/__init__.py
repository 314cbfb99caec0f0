"""The run engine of the offline jobs (``ssb-trl prepare``, ``ssb-trl label``, and any later one); it knows no job.

settings  the fields every job shares (output, soft labels), what is runtime-only, the one settings fingerprint
identity  what a model, tokenizer, input file and shard of inputs are, by content (one digest rule each)
workdir   the run's folder: settings, one file per shard and stage, the rows, the published dataset
lock      one run per folder
resume    reconcile a rerun's settings with the recorded run, driven by the job's table "setting -> stage"
rows      the soft-label rows both jobs write (teacher prompt + completion -> soft labels; student prompt + completion)
runner    the Job interface and run_job: preflight, lock, resume, the processes' shards, finalize, publish
"""
