"""Side by side, one process, interleaved: the check before (commit 66a9471, verify/solution.py) and the new
tutor check, on the six-step solutions of the dev file (wrong and right alike)."""
import json, time, sys, subprocess
from pathlib import Path
import numpy as np
# the check before, as it was at 66a9471, loaded for this run only (run from the repository root:
#   python scripts/results/check-real/timing_script.py 20 scripts/results/check-real/timing.json)
Path('specguard_local/verify/_old_solution.py').write_text(
    subprocess.run(['git', 'show', '66a9471:specguard_local/verify/solution.py'], capture_output=True, text=True,
                   check=True).stdout)
from specguard_local.verify._old_solution import check_solution as old_check
from specguard_local.tutor.check import check_solution as new_check
from specguard_local.runtime import Runtime, RuntimeConfig
from specguard_local.verify.signals import default_profile
from specguard_local.bench import machine
rows=[json.loads(l) for l in open('../shared/datasets/mr_gsm8k_steps_dev.jsonl')]
cases=[(r['question'], r[k]) for r in rows for k in ('student_steps','reference_steps') if len(r[k])==6][:int(sys.argv[1])]
out={'old':[], 'new':[], 'new_tokens':[], 'old_hint':[]}
profile=default_profile()
try:
    with Runtime(RuntimeConfig()) as rt:
        new_check(rt, cases[0][0], cases[0][1], profile)  # warm-up: both models loaded, contexts built
        old_check(rt, rt.prompt_tokens(cases[0][0]), cases[0][1], profile, threshold=-2.04)
        for q, steps in cases:
            t=time.perf_counter(); r=old_check(rt, rt.prompt_tokens(q), steps, profile, threshold=-2.04); out['old'].append(time.perf_counter()-t); out['old_hint'].append(r.hint is not None)
            t=time.perf_counter(); r=new_check(rt, q, steps, profile); out['new'].append(time.perf_counter()-t); out['new_tokens'].append(r.target_tokens)
            print(round(out['old'][-1],1), round(out['new'][-1],1), r.target_tokens, flush=True)
finally:
    Path('specguard_local/verify/_old_solution.py').unlink()
summary={'solutions': len(cases), 'machine': machine(), 'date': time.strftime('%Y-%m-%d'),
 'old_commit': '66a9471 (specguard_local/verify/solution.py, shipped threshold -2.04, hint written when flagged)',
 'old_s': {'p50': float(np.percentile(out['old'],50)), 'p95': float(np.percentile(out['old'],95)), 'mean': float(np.mean(out['old']))},
 'new_s': {'p50': float(np.percentile(out['new'],50)), 'p95': float(np.percentile(out['new'],95)), 'mean': float(np.mean(out['new']))},
 'new_target_tokens': {'p50': float(np.percentile(out['new_tokens'],50)), 'p95': float(np.percentile(out['new_tokens'],95))},
 'ratio_of_means': float(np.mean(out['new'])/np.mean(out['old'])), 'rows': out}
Path(sys.argv[2]).write_text(json.dumps(summary, indent=2)+'\n')
print(json.dumps({k:v for k,v in summary.items() if k!='rows'}, indent=2))
