"""The same small model tree written with jparam and with PyTorch, for naming/order parity tests.

Each module assigns a child *before* its own parameter and buffer (PyTorch still lists a module's
own parameters, then its own buffers, then its children), and the norm layer has parameters,
persistent buffers (float and int) and a non-persistent one.
"""

import jax.numpy as jnp
import numpy as np

import jparam as jp


class Linear(jp.Module):
    weight: jp.Parameter
    bias: jp.Parameter

    def __init__(self, n_in, n_out):
        rng = np.random.default_rng(n_in * 10 + n_out)
        self.weight = jp.Parameter(rng.standard_normal((n_out, n_in)).astype(np.float32))
        self.bias = jp.Parameter(jnp.zeros(n_out))

    def __call__(self, x):
        return x @ self.weight.T + self.bias


class Norm(jp.Module):
    weight: jp.Parameter
    bias: jp.Parameter
    running_mean: jp.Buffer
    running_var: jp.Buffer
    num_batches_tracked: jp.Buffer
    scratch: jp.Buffer

    def __init__(self, n):
        self.weight = jp.Parameter(jnp.ones(n))
        self.bias = jp.Parameter(jnp.zeros(n))
        self.running_mean = jp.Buffer(jnp.zeros(n))
        self.running_var = jp.Buffer(jnp.ones(n))
        self.num_batches_tracked = jp.Buffer(jnp.array(0))
        self.scratch = jp.Buffer(jnp.zeros(n), persistent=False)


class Block(jp.Module):
    fc: Linear
    scale: jp.Parameter
    norm: Norm
    step: jp.Buffer

    def __init__(self, n):
        self.fc = Linear(n, n)  # a child first ...
        self.scale = jp.Parameter(jnp.ones(n))  # ... then an own parameter
        self.norm = Norm(n)
        self.step = jp.Buffer(jnp.array(0))


class Net(jp.Module):
    embed: jp.Parameter
    blocks: list
    head: Linear
    mask: jp.Buffer

    def __init__(self, n=4, depth=2):
        self.embed = jp.Parameter(jnp.arange(3 * n, dtype=jnp.float32).reshape(3, n))
        self.blocks = [Block(n) for _ in range(depth)]
        self.head = Linear(n, 2)
        self.mask = jp.Buffer(jnp.ones(n, dtype=jnp.bool_))


def torch_net(n=4, depth=2):
    """The PyTorch twin of `Net` (imports torch lazily: callers importorskip it first)."""
    import torch
    from torch import nn

    class TNorm(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n))
            self.bias = nn.Parameter(torch.zeros(n))
            self.register_buffer("running_mean", torch.zeros(n))
            self.register_buffer("running_var", torch.ones(n))
            self.register_buffer("num_batches_tracked", torch.tensor(0))
            self.register_buffer("scratch", torch.zeros(n), persistent=False)

    class TBlock(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.fc = nn.Linear(n, n)
            self.scale = nn.Parameter(torch.ones(n))
            self.norm = TNorm(n)
            self.register_buffer("step", torch.tensor(0))

    class TNet(nn.Module):
        def __init__(self, n, depth):
            super().__init__()
            self.embed = nn.Parameter(torch.randn(3, n))
            self.blocks = nn.ModuleList([TBlock(n) for _ in range(depth)])
            self.head = nn.Linear(n, 2)
            self.register_buffer("mask", torch.ones(n, dtype=torch.bool))

    torch.manual_seed(0)
    net = TNet(n, depth)
    with torch.no_grad():  # make every float entry distinct from the jparam twin's values
        for p in net.parameters():
            p.add_(torch.randn_like(p))
        for b in net.buffers():
            if b.is_floating_point():
                b.add_(torch.rand_like(b))
            elif b.dtype == torch.int64:
                b.add_(7)
    return net
