"""Quickstart: TANDEM's mixture update inside your own loop, with no framework (numpy only).

Three domains; a fake "training" gives the twins per-domain losses. The reference twin (trained
with the validation data) improves on domain 0 and gets worse on domain 2 (noise): TANDEM moves
weight toward domain 0 and away from domain 2.
"""

import numpy as np

import tandem_core as tc
from tandem_core.methods import get_method

rng = np.random.default_rng(0)
num_domains, batch = 3, 48
schedule = tc.Schedule(probe_steps=5, free_steps=20)
updates = 30
# the library's default TANDEM update for a run of 30 episodes (5 probe + 20 free steps each):
# exponentiated gradient on the RMS-normalised Delta; the output averages the last 15 mixtures
transform = get_method("tandem").make_transform(num_domains=num_domains, steps=25 * updates)
state = transform.init(num_domains)

for tick in range(updates * schedule.length):
    if schedule.phase(tick) is not tc.Phase.UPDATE:
        continue  # SYNC / PROBE / FREE: your training steps go here
    ids = rng.integers(0, num_domains, size=batch)
    proxy = rng.normal(2.0, 0.05, size=batch)
    gain = np.array([-0.02, 0.0, 0.02])[ids]  # what the extra (validation) data did to each domain
    reference = proxy + gain + rng.normal(0, 0.005, size=batch)
    stats = tc.TwinStats(
        proxy=tc.domain_stats(proxy, ids, num_domains),
        reference=tc.domain_stats(reference, ids, num_domains),
    )
    state = transform.update(state, stats)

summary = tc.mixture_summary(state)
print("average mixture:", np.round(summary.average, 3))
print("last mixture:   ", np.round(summary.last, 3))
assert summary.last[0] > 1 / 3 > summary.last[2]
