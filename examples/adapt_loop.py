"""ADAPT in your own training loop, with PyTorch or JAX: ``python adapt_loop.py [jax]``.

Per step: ONE forward gives the logits and the last hidden states; the pooled hidden states,
compared with the anchor centroid, give per-sample weights (constants for the optimiser); the loss
is ``sum_i w_i l_i / B``. Every ``R`` steps the centroid is recomputed from the anchor set (here the
suite's target validation data) with the current model, forward only. On the planted suite the
``easy`` and ``noise`` domains end up with lower weights than ``target_like``.

Inside ``tandem train`` (CLI) or ``MixtureRun`` the same is the ``[train]`` key
``weighting = "adapt"`` (docs/methods.md, ADAPT).
"""

import sys

import numpy as np

import tandem_core as tc
from tandem_adapters.data import TokenSampler, make_suite
from tandem_core.run import GPTConfig, init_gpt_params

STEPS, R, TAU = 150, 25, 0.1
corpus = make_suite("planted", seed=0, vocab_size=32)
sampler = TokenSampler(corpus, seq_len=16, seed=0)
anchors = sampler.validation_sets(64)[0]  # the target set: tokens, labels (B, T)
gpt = GPTConfig(vocab_size=32, seq_len=16, d_model=32, n_layer=1, n_head=2)
params = init_gpt_params(gpt, 0)
transform = tc.adapt(tau=TAU, refresh_every=R)
weights_seen = []


def torch_loop() -> None:
    """The loop in PyTorch: detach the hidden states and the weights."""
    import torch

    from tandem_torch import TinyGPT, per_sample_loss

    model = TinyGPT(gpt, params)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    state = transform.init(gpt.d_model, xp=torch)
    for step in range(STEPS):
        if transform.needs_refresh(step):  # anchor centroid with the current model, no grad
            with torch.no_grad():
                labels = torch.as_tensor(anchors["labels"])
                _, hidden = model(torch.as_tensor(anchors["tokens"]), return_hidden=True)
                phi = tc.pool_hidden(hidden, tc.input_mask(labels))  # (V, H)
                state = transform.refresh(state, phi, step)
        batch = sampler.train_batch(8)
        labels = torch.as_tensor(batch["labels"])
        logits, hidden = model(torch.as_tensor(batch["tokens"]), return_hidden=True)
        losses, _ = per_sample_loss(logits, labels)
        w = transform.weights(state, hidden.detach(), tc.input_mask(labels)).detach()
        loss = tc.weighted_loss(losses, w)  # sum_i w_i l_i / B
        opt.zero_grad()
        loss.backward()
        opt.step()
        weights_seen.append((batch["domain"], w.numpy()))


def jax_loop() -> None:
    """The loop in JAX: ``stop_gradient`` on the hidden states and the weights, jitted steps."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    from tandem_jax import TinyGPT, per_sample_loss

    model = TinyGPT.create(gpt, params)
    tx = optax.adamw(3e-3, weight_decay=0.0)
    opt = tx.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def refresh(model, state, tokens, labels, step):
        _, hidden = model(tokens)  # forward only: no gradient is taken here
        return transform.refresh(state, tc.pool_hidden(hidden, tc.input_mask(labels)), step)

    @eqx.filter_jit
    def train_step(model, opt, state, tokens, labels):
        def loss_fn(m):
            logits, hidden = m(tokens)
            losses, _ = per_sample_loss(logits, labels)
            w = jax.lax.stop_gradient(
                transform.weights(state, jax.lax.stop_gradient(hidden), tc.input_mask(labels))
            )
            return tc.weighted_loss(losses, w), w

        (_, w), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model)
        updates, opt = tx.update(grads, opt, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt, w

    state = transform.init(gpt.d_model, xp=jnp)
    for step in range(STEPS):
        if transform.needs_refresh(step):
            a_tok, a_lab = jnp.asarray(anchors["tokens"]), jnp.asarray(anchors["labels"])
            state = refresh(model, state, a_tok, a_lab, jnp.asarray(step))
        batch = sampler.train_batch(8)
        tokens, labels = jnp.asarray(batch["tokens"]), jnp.asarray(batch["labels"])
        model, opt, w = train_step(model, opt, state, tokens, labels)
        weights_seen.append((batch["domain"], np.asarray(w)))


if __name__ == "__main__":
    jax_loop() if sys.argv[1:] == ["jax"] else torch_loop()
    late = weights_seen[STEPS // 2 :]  # after the representations have spread out
    ids = np.concatenate([d for d, _ in late])
    w = np.concatenate([x for _, x in late])
    print(f"effective data ratio (mean weight): {w.mean():.3f}")
    for m, name in enumerate(corpus.domains):
        print(f"  {name:<12} mean weight {w[ids == m].mean():.3f}")
    target, easy = corpus.domains.index("target_like"), corpus.domains.index("easy")
    assert w[ids == easy].mean() < w[ids == target].mean()
