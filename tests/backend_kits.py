"""One test-facing API over both backends, so one test body runs on torch and on JAX."""

from __future__ import annotations

import numpy as np
import pytest

from tandem_core.methods import all_methods, get_method
from tandem_core.run import GPTConfig, TrainConfig


class TorchKit:
    name = "torch"

    def no_host_sync(self):
        """Every .item()/.cpu()/.tolist()/.numpy()/bool()/float()/int() on a tensor, called from
        tandem code, raises (torch's own CPU-side optimizer bookkeeping is not ours to police)."""
        import contextlib
        import sys

        torch = self.torch

        @contextlib.contextmanager
        def guard():
            names = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")
            saved = {n: getattr(torch.Tensor, n) for n in names}

            def make(name):
                original = saved[name]

                def patched(self, *args, **kwargs):
                    caller = sys._getframe(1).f_globals.get("__name__", "")
                    if caller.startswith(("tandem_core", "tandem_torch")):
                        raise AssertionError(f"host sync: Tensor.{name} called from {caller}")
                    return original(self, *args, **kwargs)

                return patched

            for n in names:
                setattr(torch.Tensor, n, make(n))
            try:
                yield
            finally:
                for n, f in saved.items():
                    setattr(torch.Tensor, n, f)

        return guard()

    def __init__(self):
        import torch

        import tandem_torch

        self.torch, self.mod = torch, tandem_torch

    def model(self, cfg, params, dtype="float32", poison=None):
        torch = self.torch
        model = self.mod.TinyGPT(cfg, params, dtype=getattr(torch, dtype))
        if poison is not None:
            model = _poisoned_torch(model, poison)
        return model

    def engine(self, model, config, m, v=None, options=None, **kw):
        options = self.mod.TorchOptions(**{"device": "cpu", **(options or {})})
        return self.mod.TorchEngine(model, config, m, num_val_domains=v, options=options, **kw)

    def params(self, engine, which="proxy"):
        twins = engine.twins
        return self.mod.numpy_params(twins.proxy if which == "proxy" else twins.reference)

    def distance(self, engine):
        return float(engine.twins.distance())

    def opt_moments(self, engine, which="proxy"):
        twins = engine.twins
        opt = twins.opt_proxy if which == "proxy" else twins.opt_reference
        out = []
        for p in (twins.proxy if which == "proxy" else twins.reference).parameters():
            st = opt.state.get(p, {})
            out += [
                st[k].detach().numpy().copy()
                for k in ("step", "exp_avg", "exp_avg_sq", "momentum_buffer")
                if k in st and st[k] is not None
            ]
        return out

    def forward(self, model, tokens):
        with self.torch.no_grad():
            logits, hidden = model(self.torch.as_tensor(tokens), return_hidden=True)
        return logits.numpy(), hidden.numpy()

    def losses(self, model, batch):
        logits, _ = model(self.torch.as_tensor(batch["tokens"]), return_hidden=True)
        loss, n = self.mod.per_sample_loss(logits, self.torch.as_tensor(batch["labels"]))
        return loss.detach().numpy(), n.numpy()

    def grads(self, engine, train, val, m, v):
        from tandem_torch.grads import alignment_gradients

        b, proxy = engine.twins.batch, engine.twins.proxy
        g, gv, _, _ = alignment_gradients(proxy, b(train), b(val), m, v)
        names = [k for k, _ in proxy.named_parameters()]
        flat = np.stack(
            [np.concatenate([g[k][i].reshape(-1).numpy() for k in names]) for i in range(m)]
        )
        return flat, np.concatenate([gv[k].reshape(-1).numpy() for k in names])

    def flat(self, engine, which="proxy"):
        return np.concatenate([v.reshape(-1) for v in self.params(engine, which).values()])


class JaxKit:
    name = "jax"

    def no_host_sync(self):
        """No implicit transfer either way (batches enter through an explicit device_put)."""
        return self.jax.transfer_guard("disallow")

    def __init__(self):
        import jax

        import tandem_jax

        self.jax, self.mod = jax, tandem_jax

    def model(self, cfg, params, dtype="float32", poison=None):
        model = self.mod.TinyGPT.create(cfg, params, dtype=dtype)
        return model if poison is None else _poisoned_jax(model, poison)

    def engine(self, model, config, m, v=None, options=None, **kw):
        options = self.mod.JaxOptions(**(options or {}))
        return self.mod.JaxEngine(model, config, m, num_val_domains=v, options=options, **kw)

    def params(self, engine, which="proxy"):
        import equinox as eqx

        twins = engine.twins
        p = twins.proxy if which == "proxy" else twins.reference
        model = eqx.combine(p, engine.spec.static)
        return self.mod.to_numpy(getattr(model, "inner", model))

    def distance(self, engine):
        return float(self.mod.distance(engine.twins))

    def opt_moments(self, engine, which="proxy"):
        twins = engine.twins
        state = twins.opt_proxy if which == "proxy" else twins.opt_reference
        return [np.asarray(x).copy() for x in self.jax.tree.leaves(state)]

    def forward(self, model, tokens):
        logits, hidden = model(self.jax.numpy.asarray(tokens))
        return np.asarray(logits), np.asarray(hidden)

    def losses(self, model, batch):
        logits, _ = model(self.jax.numpy.asarray(batch["tokens"]))
        loss, n = self.mod.per_sample_loss(logits, self.jax.numpy.asarray(batch["labels"]))
        return np.asarray(loss), np.asarray(n)

    def grads(self, engine, train, val, m, v):
        from tandem_jax.grads import alignment_gradients

        def loss(params, tokens, labels):
            return self.mod.loss(engine.spec, params, tokens, labels)

        b = engine.batch
        g, gv, _, _ = alignment_gradients(loss, engine.twins.proxy, b(train), b(val), m, v)
        names = list(self.mod.to_numpy(engine.proxy_model()))
        leaves_g = _by_name(self, engine, g, names, m)
        leaves_v = _by_name(self, engine, gv, names, None)
        return leaves_g, leaves_v

    def flat(self, engine, which="proxy"):
        return np.concatenate([v.reshape(-1) for v in self.params(engine, which).values()])


def _by_name(kit, engine, tree, names, m):
    import equinox as eqx

    static = engine.spec.static
    if m is None:
        d = kit.mod.to_numpy(eqx.combine(tree, static))
        return np.concatenate([d[k].reshape(-1) for k in names])
    rows = []
    for i in range(m):
        sub = kit.jax.tree.map(lambda a, i=i: a[i], tree)
        d = kit.mod.to_numpy(eqx.combine(sub, static))
        rows.append(np.concatenate([d[k].reshape(-1) for k in names]))
    return np.stack(rows)


def _poisoned_torch(model, poison):
    import torch

    class Poisoned(type(model)):
        def forward(self, tokens, return_hidden=False):
            logits, hidden = super().forward(tokens, return_hidden=True)
            bad = torch.where((tokens == poison).any(-1), float("nan"), 0.0)
            logits = logits + bad[:, None, None]
            return (logits, hidden) if return_hidden else logits

    model.__class__ = Poisoned
    return model


def _poisoned_jax(model, poison):
    import equinox as eqx
    import jax.numpy as jnp

    class Poisoned(eqx.Module):
        inner: eqx.Module
        poison: int = eqx.field(static=True)

        def __call__(self, tokens):
            logits, hidden = self.inner(tokens)
            bad = jnp.where((tokens == self.poison).any(-1), jnp.nan, 0.0)
            return logits + bad[:, None, None], hidden

    return Poisoned(model, poison)


def available_kits():
    kits = []
    for name, cls in (("torch", TorchKit), ("jax", JaxKit)):
        try:
            __import__(name)
            kits.append(pytest.param(cls, id=name))
        except ImportError:
            continue
    return kits


SMALL = GPTConfig(vocab_size=16, seq_len=16, d_model=32, n_layer=1, n_head=2)
TOY = dict(
    steps=40,
    batch_per_domain=4,
    val_batch_size=6,
    eval_per_domain=4,
    log_every=10,
    probe_steps=2,
    free_steps=3,
)


def toy_config(**overrides) -> TrainConfig:
    """A TrainConfig sized for the 3-domain toy task; keyword arguments override the defaults.

    Keys that belong only to other methods than ``method`` are dropped, so one parametrised test
    body can pass e.g. ``reference_steps`` (DoReMi) and ``probe_steps`` (TANDEM) to every method.
    """
    values = {**TOY, **overrides}
    method = get_method(values.get("method", "tandem"))
    others = {k for m in all_methods() if m.name != method.name for k in m.keys}
    return TrainConfig.from_mapping(
        {k: v for k, v in values.items() if k in method.keys or k not in others}
    )
