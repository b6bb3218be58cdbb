"""TANDEM inside a Hugging Face ``Trainer``: a dataset with a domain column, a few added lines.

The planted suite is written as ``datasets.Dataset`` rows (``input_ids``, ``labels``, ``domain``);
``TandemTrainer`` trains a tiny GPT-2 on them and learns the mixture on the way.

    python examples/hf_trainer.py --steps 100 --out mixture.json
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

import tandem_core as tc
from tandem_adapters.data import TokenSampler, make_suite
from tandem_torch import TandemTrainer

SEQ_LEN = 32


def planted_datasets() -> tuple[Dataset, Dataset]:
    """Train and validation rows of the planted suite, HF style (labels = input_ids)."""
    sampler = TokenSampler(make_suite("planted"), SEQ_LEN, seed=1)

    def rows(batch: dict, names: tuple) -> dict:
        ids = np.concatenate([batch["tokens"], batch["labels"][:, -1:]], axis=1).tolist()
        return {"input_ids": ids, "labels": ids, "domain": [names[d] for d in batch["domain"]]}

    train = rows(sampler.train_batch(256), sampler.domains)
    val = [rows(b, sampler.val_domains) for b in sampler.validation_sets(64)]
    val = {k: sum((v[k] for v in val), []) for k in train}
    return Dataset.from_dict(train), Dataset.from_dict(val)


def main() -> None:
    """Train with ``TandemTrainer``; print the mixture; ``mixture.json`` lands in output_dir."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100, help="Trainer steps (proxy steps)")
    p.add_argument("--out", help="copy the learned mixture.json here")
    args = p.parse_args()
    train, val = planted_datasets()
    config = GPT2Config(vocab_size=32, n_positions=SEQ_LEN, n_embd=32, n_layer=2, n_head=2)
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):  # no dropout in twins
        setattr(config, key, 0.0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    output_dir = tempfile.mkdtemp()
    training_args = TrainingArguments(
        output_dir=output_dir,
        max_steps=args.steps,
        learning_rate=3e-3,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        per_device_train_batch_size=16,  # rows of EVERY domain per step
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    # the added lines: the domain column, the val rows and the schedule; with no `transform=`
    # the trainer builds the library's default TANDEM update for max_steps (as `tandem optimize`)
    trainer = TandemTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        val_dataset=val,
        domain_column="domain",
        schedule=tc.Schedule(probe_steps=5, free_steps=20),
    )
    trainer.train()
    summary = trainer.mixture_summary()  # the time-averaged mixture is the answer
    for name, weight in zip(trainer.sampler.domains, summary.average.tolist()):
        print(f"{name:>12s} {weight:.3f}")
    print("mixture written to", Path(output_dir) / "mixture.json")
    if args.out:
        shutil.copy(Path(output_dir) / "mixture.json", args.out)


if __name__ == "__main__":
    main()
