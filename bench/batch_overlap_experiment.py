"""Experiment: does overlapping pair i's writing + QC with pair i+1's compute shorten a batch on 2 cores?

    python bench/batch_overlap_experiment.py     (from the repository root, ../shared/data beside it)

The 6 ordered aseg pairs, images read beforehand, --refine 0, model loaded once; outputs in
/tmp/voxelmorphreg-overlap. Result of 2026-12-03 (AMD EPYC, 2 cores, quiet): sequential 21.2 /
21.7 s, overlapped 20.6 / 20.3 s (about 5 %).
"""
import time
from concurrent.futures import ThreadPoolExecutor
from VoxelMorphRegLib.contract import RegisterOptions
from VoxelMorphRegLib.pipelines.loaded_model import load_model
from VoxelMorphRegLib.pipelines.register import register_images, write_outputs
from VoxelMorphRegLib.image.pair_files import read_pair
D = "../shared/data/aseg"
opts = RegisterOptions(refine_iterations=0)
model = load_model(opts)
pairs = [(f"{D}/subj0{f}_norm.nii.gz", f"{D}/subj0{m}_norm.nii.gz", f"{D}/subj0{m}_seg.nii.gz") for f, m in [(1,2),(1,3),(2,1),(2,3),(3,1),(3,2)]]
imgs = [read_pair(f, m, ml) for f, m, ml in pairs]
quiet = lambda *a: None
def run(overlap):
    t = time.perf_counter()
    pool = ThreadPoolExecutor(1); pending = None
    for n, im in enumerate(imgs):
        r = register_images(im.fixed, im.moving, opts, im.moving_labels, None, quiet, model=model)
        if overlap:
            if pending: pending.result()
            pending = pool.submit(write_outputs, f"/tmp/voxelmorphreg-overlap/{n}", im, r, opts, time.perf_counter(), quiet)
        else:
            write_outputs(f"/tmp/voxelmorphreg-overlap/{n}", im, r, opts, time.perf_counter(), quiet)
    if pending: pending.result()
    return time.perf_counter() - t
run(False)
for k in range(2):
    print("sequential", round(run(False), 2), "overlapped", round(run(True), 2), flush=True)
