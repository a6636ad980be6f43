"""Past one machine: a batch split into shards of manifest positions, queued on Dramatiq (Redis), each shard
run by today's engine into a run directory of its own under the batch's DIR (a local path or a shared mount).

    plan.py    the batch's plan (DIR/cluster/plan.json) and its shards: pure data
    queue.py   the shards as Dramatiq messages on Redis; redis' and Dramatiq's errors are translated there
    submit.py  validate a manifest, write the plan, queue the shards; queue them again (resume, retry)
    shard.py   run one shard with batch.running.job
    worker.py  take shards off the queues and run them, one at a time, until told to stop (or none are left)
    view.py    what a sharded DIR holds, shard by shard and in total: status, and report/export/gallery
"""
