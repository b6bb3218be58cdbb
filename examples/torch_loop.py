"""TANDEM in your own PyTorch loop: a Hugging Face GPT-2, AdamW, and ``tandem_torch.Twins``.

The twins are your model u and a copy w. Each episode syncs w to u, trains both for a few probe
steps (u on the mixture-weighted train loss, w on the validation loss plus the train loss),
compares their per-domain losses, and moves the mixture toward the domains where the copy
trained for validation did better; u then trains freely under the new mixture.

    python examples/torch_loop.py --steps 600 --out mixture.json

With the same settings this learns the same mixture as
``tandem optimize --set model.kind=hf --set model.hf_config=DIR`` (write DIR with
``--config-dir DIR``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import tandem_core as tc
from tandem_adapters.data import TokenSampler, make_suite
from tandem_core.methods import get_method
from tandem_torch import Twins

SEQ_LEN = 32


def gpt2_config() -> GPT2Config:
    """A tiny GPT-2 for the planted suite (vocabulary 32), dropout off.

    The twins must compute the same function of their weights: their loss difference is then
    signal, not dropout noise.
    """
    return GPT2Config(
        vocab_size=32,
        n_positions=SEQ_LEN,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=None,  # GPT-2's 50256 is outside this vocabulary
        eos_token_id=None,
    )


def main() -> None:
    """Learn a mixture with twins of a GPT-2; print it and optionally write it as JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600, help="proxy steps (probe + free)")
    p.add_argument("--out", help="write the learned mixture here (JSON)")
    p.add_argument("--config-dir", help="write the GPT-2 config.json here (for the CLI)")
    args = p.parse_args()
    config = gpt2_config()
    if args.config_dir:
        config.save_pretrained(args.config_dir)

    torch.manual_seed(0)  # the model's random initialisation
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sampler = TokenSampler(make_suite("planted"), SEQ_LEN, seed=0)
    domains = list(sampler.domains)
    # the reference w is a deep copy of the model, with a copy of the optimizer
    twins = Twins(
        model, optimizer, num_domains=len(domains), num_val_domains=len(sampler.val_domains)
    )

    # the library's default TANDEM update (what `tandem optimize` runs): exponentiated gradient
    # on the RMS-normalised Delta; the run's length sets the output's burn-in (the first half)
    transform = get_method("tandem").make_transform(num_domains=len(domains), steps=args.steps)
    state = twins.init_mixture(transform)
    schedule = tc.Schedule(probe_steps=5, free_steps=20)  # SYNC, 5 x PROBE, UPDATE, 20 x FREE
    tick = steps = 0
    while steps < args.steps:
        match schedule.phase(tick):
            case tc.Phase.SYNC:  # w <- u: parameters and optimizer state
                twins.sync()
            case tc.Phase.PROBE:  # u on the train loss, w on val + train: the same batch
                twins.probe(sampler.train_batch(16), sampler.val_batch(32), state.alpha)
                steps += 1
            case tc.Phase.UPDATE:  # per-domain losses of both twins -> the new mixture
                state = transform.update(state, twins.stats(sampler.eval_batch(16)))
            case tc.Phase.FREE:  # u alone, on the mixture-weighted train loss
                twins.step(sampler.train_batch(16), state.alpha)
                steps += 1
        tick += 1

    summary = tc.mixture_summary(state)  # the time-averaged mixture is the answer
    result = {
        "domains": domains,
        "average": summary.average.tolist(),
        "last": summary.last.tolist(),
    }
    for name, weight in zip(domains, result["average"]):
        print(f"{name:>12s} {weight:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
