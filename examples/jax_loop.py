"""TANDEM in your own JAX loop: an equinox model, an optax optimizer and the pure twin functions.

    python examples/jax_loop.py [--steps 600] [--out mixture.json]

The twins (proxy u, reference w) are one pytree; every function returns new twins and nothing is
mutated. An episode syncs w to u, probes both K steps on the same batches (u on the mixture's
train loss, w on the validation loss plus the train loss), moves the mixture by the difference of
their per-domain losses, then trains u E free steps under the new mixture (docs/methods.md). With
these settings it learns the same mixture as ``tandem optimize`` (the library's defaults), bit
for bit: ``tandem_jax.JaxEngine`` runs these very functions.
"""

import argparse
import json

import jax
import jax.numpy as jnp
import optax

import tandem_core as tc
import tandem_jax as tj
from tandem_adapters.data import TokenSampler, make_suite
from tandem_core.methods import get_method
from tandem_core.run import GPTConfig, init_gpt_params


def learn_mixture(steps: int) -> tuple[tuple[str, ...], tc.MixtureSummary]:
    """Run TANDEM for ``steps`` proxy optimizer steps; returns the domains and the mixture."""
    corpus = make_suite("planted")  # 5 training domains, one target validation set, vocab 32
    sampler = TokenSampler(corpus, 32, seed=0)  # host numpy batches of 32-token windows
    m = len(corpus.domains)

    # The library's default proxy: d_model 64, 2 layers, 4 heads, MLP ratio 4, seed 0.
    cfg = GPTConfig(32, 32, 64, 2, 4)  # vocab_size, seq_len, d_model, n_layer, n_head
    model = tj.TinyGPT.create(cfg, init_gpt_params(cfg, 0))
    # Clipping comes first, then AdamW: the defaults of ``tandem optimize``.
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(3e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0),
    )
    # ``spec`` is static (model structure, optimizers); ``twins`` holds every array.
    spec, twins = tj.make_twins(
        model, optimizer, num_domains=m, num_val_domains=len(corpus.val_domains)
    )

    # The mixture update is a pure function too: jit it once.
    # The library's default TANDEM update, as `tandem optimize` builds it for this run length.
    transform = get_method("tandem").make_transform(num_domains=m, steps=steps)
    update = jax.jit(transform.update)
    state = transform.init(m, xp=jnp, dtype=jnp.float32)
    schedule = tc.Schedule(probe_steps=5, free_steps=20)  # SYNC, PROBE x5, UPDATE, FREE x20

    tick = taken = 0
    # Batches enter with an explicit device_put and nothing is read back inside the loop, so
    # it runs under the strictest transfer guard (no hidden host-device copies).
    with jax.transfer_guard("disallow"):
        while taken < steps:  # PROBE and FREE ticks are optimizer steps of u
            match schedule.phase(tick):
                case tc.Phase.SYNC:  # w <- u: parameters and optimizer state
                    twins = tj.sync(twins)
                case tc.Phase.PROBE:  # the same train batch for both twins
                    train, val = sampler.train_batch(16), sampler.val_batch(32)
                    twins, _ = tj.probe(spec, twins, train, val, state.alpha)
                    taken += 1
                case tc.Phase.UPDATE:  # per-domain losses of u and w on a fresh batch
                    state = update(state, tj.stats(spec, twins, sampler.eval_batch(16)))
                case tc.Phase.FREE:
                    twins, _ = tj.step(spec, twins, sampler.train_batch(16), state.alpha)
                    taken += 1
            tick += 1
    return corpus.domains, tc.mixture_summary(state)


def main() -> None:
    """Parse the options, learn the mixture, print it and optionally write it as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="proxy optimizer steps")
    parser.add_argument("--out", help="write {domains, average, last} to this JSON file")
    args = parser.parse_args()
    domains, summary = learn_mixture(args.steps)
    result = {
        "domains": list(domains),
        "average": [float(a) for a in summary.average],  # the time-averaged mixture: the output
        "last": [float(a) for a in summary.last],
    }
    for name, weight in zip(domains, result["average"]):
        print(f"{name:>12s}  {weight:.4f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
