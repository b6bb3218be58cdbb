"""Checkpoints of ``Twins``: both models, both optimizer states, counters, torch's RNG state.

The tree holds tensors and Python values only (``tandem_core.save_state`` stores it); FSDP
shards are gathered into whole tensors and laid out again on load, so a checkpoint does not
depend on the number of ranks.
"""

from __future__ import annotations

import torch

from .batches import as_tensor
from .distributed import full, shard_like
from .optim import optimizer_from_tree, optimizer_to_tree
from .twins import Twins

__all__ = ["host_state_dict", "load_state_dict", "state_dict"]


def state_dict(twins: Twins) -> dict:
    """Everything needed to resume ``twins``: a tree of tensors and Python values."""
    twins.reshard()
    return {
        "proxy": {k: full(v.detach()) for k, v in twins.proxy.state_dict().items()},
        "reference": {k: full(v.detach()) for k, v in twins.reference.state_dict().items()},
        "opt_u": optimizer_to_tree(twins.opt_proxy),
        "opt_w": optimizer_to_tree(twins.opt_reference),
        "counters": twins.stepper.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }


def host_state_dict(twins: Twins) -> dict:
    """The counters and torch's RNG state only (sharded checkpoints hold the rest)."""
    return {"counters": twins.stepper.state_dict(), "torch_rng": torch.get_rng_state()}


def load_state_dict(twins: Twins, state: dict) -> None:
    """Restore ``state_dict`` (or ``host_state_dict``) into ``twins`` (arrays may be numpy)."""
    if "proxy" not in state:  # host part of a sharded checkpoint: the shards load apart
        twins.stepper.load_state_dict(state["counters"])
        torch.set_rng_state(as_tensor(state["torch_rng"]).to(torch.uint8))
        return
    twins.reshard()
    for module, key in ((twins.proxy, "proxy"), (twins.reference, "reference")):
        current = module.state_dict()
        module.load_state_dict(
            {k: shard_like(as_tensor(v), current[k]) for k, v in state[key].items()}
        )
    optimizer_from_tree(twins.opt_proxy, state["opt_u"], twins.device)
    optimizer_from_tree(twins.opt_reference, state["opt_w"], twins.device)
    twins.stepper.load_state_dict(state["counters"])
    torch.set_rng_state(as_tensor(state["torch_rng"]).to(torch.uint8))
