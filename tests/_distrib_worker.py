"""Launched by tests/test_distributed.py under torch.distributed.run (not collected by pytest).

    python -m torch.distributed.run --nproc_per_node 2 tests/_distrib_worker.py SPEC.json

SPEC: data, weights, margins, passes (a list of {"cache": folder or null, "out": pickle}), and optionally
fail = {"rank": r, "after": n, "how": "raise" | "exit"}: that rank raises (or dies with os._exit) at its n+1-th batch.
Every rank prints one JSON line: its rank and how many batches it boxed in each pass."""
import json, os, sys, warnings
warnings.filterwarnings('ignore')
import torch
import fastai_attncrop.learner as L, fastai_attncrop.boxpass as BP
from fastai.distributed import teardown_distrib
from fastai_attncrop.distributed import setup_distributed, distrib_box_pass, _learner, _world

class InjectedFailure(Exception): "The failure the test asked for."

def count_batches(fail, rank):
    real, n = BP.saliency_maps, [0]
    def wrapped(*a, **k):
        if fail and fail['rank'] == rank and n[0] == fail['after']:
            if fail['how'] == 'exit': os._exit(3)
            raise InjectedFailure(f"injected failure at batch {n[0]}")
        n[0] += 1
        return real(*a, **k)
    BP.saliency_maps = wrapped
    return n

if __name__ == '__main__':
    spec = json.loads(open(sys.argv[1]).read())
    state = setup_distributed()
    rank, world = _world()
    learn = _learner(spec['data'], 'small_cnn', spec['size'], spec['bs'], 0, state.device)
    learn.model.load_state_dict(torch.load(spec['weights'], map_location='cpu'))
    n, calls = count_batches(spec.get('fail'), rank), []
    try:
        for p in spec['passes']:
            n[0] = 0
            bx = distrib_box_pass(learn, margins=spec['margins'], cache=p['cache'] or False, chunk_batches=1, progress=False)
            calls.append(n[0])
            if rank == 0: bx.to_pickle(p['out'])
        print(json.dumps({'rank': rank, 'world': world, 'batches': calls}), flush=True)
    finally: teardown_distrib()
